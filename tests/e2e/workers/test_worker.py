#!/usr/bin/python3
"""A small model worker for modelbuf's tests, standard library only (fast
to start). It holds a block of real memory as its "weights" and answers:

  GET  /health          200 {"status": "ok", "location": "device"|"host"}
  POST /infer           {"model", "echo": <request body>, "pid"}
  GET  /stream?n=N&ms=M N server-sent events, M ms apart
  GET  /slow?ms=M       answers after M ms
  GET  /big?mb=N        N MiB (bytes 0..255 repeated)
  GET  /env?name=NAME   {"value": os.environ.get(NAME)}
  GET  /cwd             {"cwd": os.getcwd()}
  POST /upload          reads the body as it arrives: {"bytes", "sum", "started", "ended"}
  POST /offload /restore /cleanup   the hooks (the weights move to a host copy)
  POST /unload-hook     the unload hook: writes --unload-mark FILE
  GET  /children        {"pids": [...], "sid": N}: the processes it started

--record FILE appends the path of every POST it gets to FILE, a line each,
as it starts (the order of requests and hooks); --cleanup-gate FILE makes
POST /cleanup wait (up to 60 s) until FILE exists.

Fault modes (flags): --exit-early (prints and exits 3), --never-healthy,
--ignore-term (ignores SIGTERM), --slow-start MS, --alloc-mb N (weights),
--grow-mb N (keeps N MiB more after every restore), --child SECONDS (a child
in its process group, `sleep`), --setsid-child SECONDS (a child that escapes
with setsid; both keep the output pipe open); POST /alloc?mb=N keeps N MiB
more at once, POST /crash exits (status 3) in the middle of the request,
POST /hang makes every later request (the health check too) hang.
"""
import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--model", default="test")
p.add_argument("--exit-early", action="store_true")
p.add_argument("--never-healthy", action="store_true")
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--slow-start", type=int, default=0)
p.add_argument("--alloc-mb", type=int, default=0)
p.add_argument("--grow-mb", type=int, default=0)
p.add_argument("--child", type=int, default=0)
p.add_argument("--setsid-child", type=int, default=0)
p.add_argument("--unload-mark", default="")
p.add_argument("--record", default="")
p.add_argument("--cleanup-gate", default="")
a = p.parse_args()


def record(path):
    if a.record:
        with open(a.record, "a") as f:
            f.write(path + "\n")


print(f"test_worker {a.model} starting on port {a.port}", flush=True)
if a.exit_early:
    print("fatal: cannot load weights (test fault)", flush=True)
    sys.exit(3)
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if a.slow_start:
    time.sleep(a.slow_start / 1000.0)

import subprocess
children = []
if a.child:  # same process group; inherits stdout (the daemon's pipe)
    children.append(subprocess.Popen(["sleep", str(a.child)]).pid)
if a.setsid_child:  # its own session: out of the worker's process group
    children.append(subprocess.Popen(["sleep", str(a.setsid_child)], start_new_session=True).pid)
if children:
    print(f"test_worker {a.model} children {children}", flush=True)
hung = {"on": False}

MiB = 1024 * 1024
state = {"location": "device", "weights": bytearray(a.alloc_mb * MiB), "host": None, "kept": []}
for i in range(0, len(state["weights"]), 4096):
    state["weights"][i] = 1  # touch every page: real resident memory


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the
    # body waits for the ACK of the headers, which the daemon's side delays
    # (up to 40 ms) on a reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        print("request: " + fmt % args, flush=True)

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        u = urlparse(self.path)
        q = parse_qs(u.query)
        while hung["on"]:
            time.sleep(3600)
        if u.path == "/children":
            return self.send_json(200, {"pids": children, "sid": os.getsid(0)})
        if u.path == "/health":
            if a.never_healthy:
                return self.send_json(503, {"status": "loading"})
            return self.send_json(200, {"status": "ok", "location": state["location"]})
        if u.path == "/stream":
            n, ms = int(q.get("n", ["5"])[0]), int(q.get("ms", ["100"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(n):
                self.wfile.write(f"data: {{\"token\": {i}, \"t\": {time.time()}}}\n\n".encode())
                self.wfile.flush()
                time.sleep(ms / 1000.0)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if u.path == "/slow":
            time.sleep(int(q.get("ms", ["1000"])[0]) / 1000.0)
            return self.send_json(200, {"slept_ms": int(q.get("ms", ["1000"])[0])})
        if u.path == "/big":  # ?mb=N: N MiB of a known pattern
            n = int(q.get("mb", ["1"])[0]) * MiB
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(range(256)) * 4096
            for i in range(0, n, len(block)):
                self.wfile.write(block[:min(len(block), n - i)])
            return
        if u.path == "/env":
            return self.send_json(200, {"value": os.environ.get(q.get("name", [""])[0])})
        if u.path == "/cwd":
            return self.send_json(200, {"cwd": os.getcwd()})
        return self.send_json(404, {"error": "no route " + u.path})

    def do_POST(self):
        u = urlparse(self.path)
        record(u.path)
        while hung["on"]:
            time.sleep(3600)
        if u.path == "/crash":  # dies in the middle of the request
            print("test_worker crashing (test fault)", flush=True)
            os._exit(3)
        if u.path == "/hang":
            hung["on"] = True
            return self.send_json(200, {"hung": True})
        if u.path == "/unload-hook":
            if a.unload_mark:
                with open(a.unload_mark, "w") as f:
                    f.write(str(os.getpid()))
            return self.send_json(200, {"unloading": True})
        if u.path == "/upload":  # reads the body as it comes: when did it start?
            started = time.time()
            n = int(self.headers.get("Content-Length") or 0)
            got, total = 0, 0
            while got < n:
                chunk = self.rfile.read(min(65536, n - got))
                if not chunk:
                    break
                got += len(chunk)
                total = (total + sum(chunk)) % (1 << 32)
            return self.send_json(200, {"bytes": got, "sum": total, "started": started,
                                        "ended": time.time()})
        b = self.body()
        if u.path == "/infer" or u.path.startswith("/v1/"):
            try:
                echo = json.loads(b) if b else None
            except ValueError:
                echo = b.decode(errors="replace")
            return self.send_json(200, {"model": a.model, "path": u.path, "echo": echo,
                                        "pid": os.getpid()})
        if u.path == "/offload":
            state["host"], state["weights"] = bytes(state["weights"]), bytearray()
            state["location"] = "host"
            return self.send_json(200, {"location": "host"})
        if u.path == "/restore":
            state["weights"] = bytearray(state["host"] or b"")
            state["host"] = None
            state["location"] = "device"
            if a.grow_mb:
                blk = bytearray(a.grow_mb * MiB)  # exactly N MiB, no temporary copy
                for i in range(0, len(blk), 4096):
                    blk[i] = 1
                state["kept"].append(blk)
            return self.send_json(200, {"location": "device"})
        if u.path == "/alloc":  # keeps ?mb=N MiB more while serving
            q = parse_qs(u.query)
            blk = bytearray(int(q.get("mb", ["0"])[0]) * MiB)
            for i in range(0, len(blk), 4096):
                blk[i] = 1
            state["kept"].append(blk)
            return self.send_json(200, {"kept_mb": sum(len(k) for k in state["kept"]) // MiB})
        if u.path == "/cleanup":
            deadline = time.time() + 60
            while a.cleanup_gate and not os.path.exists(a.cleanup_gate) and time.time() < deadline:
                time.sleep(0.01)
            record("/cleanup-done")
            return self.send_json(200, {"freed": 0})
        return self.send_json(404, {"error": "no route " + u.path})


ThreadingHTTPServer.daemon_threads = True
srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
print(f"test_worker {a.model} ready", flush=True)
srv.serve_forever()
