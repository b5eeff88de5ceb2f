"""modelbufd end to end: the real daemon, real worker processes (the stdlib
test worker), real HTTP on loopback. Every route of the API, the proxy's
streaming and headers, leases over HTTP, queues, eviction, failures, and a
clean stop that leaves no worker behind."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
DAEMON = os.path.join(BUILD, "daemon", "modelbufd")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "test_worker.py")
SANITIZED = os.environ.get("MB_SANITIZE", "none") not in ("", "none")
SLOW = 3 if SANITIZED else 1  # sanitized daemons are slower to answer


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def worker(*flags):
    args = ["/usr/bin/python3", WORKER, "--port", "${PORT}", "--model", "${MODEL}", *flags]
    return "[" + ", ".join(json.dumps(a) for a in args) + "]"


class Daemon:
    def __init__(self, config, port=None):
        self.dir = tempfile.mkdtemp(prefix="mb-daemon-")
        self.port = port or free_port()
        self.cfg = os.path.join(self.dir, "modelbuf.yaml")
        with open(self.cfg, "w") as f:
            f.write(f"listen: 127.0.0.1:{self.port}\n" + config)
        self.log = open(os.path.join(self.dir, "daemon.log"), "w+")
        self.proc = subprocess.Popen([DAEMON, "--config", self.cfg], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 20 * SLOW
        while time.time() < deadline:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, self.logs()
            time.sleep(0.05)
        raise AssertionError("daemon did not start: " + self.logs())

    def logs(self):
        if self.log.closed:
            return self.final_log
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return r.status, doc, dict(r.getheaders())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body if body is not None else {}, **kw)

    def status(self, name):
        return self.get("/api/models/" + name)[1]

    def wait_state(self, name, states, timeout=15):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            st = self.status(name)
            if st["state"] in states:
                return st
            time.sleep(0.05)
        raise AssertionError(f"{name} never reached {states}: {self.status(name)}")

    def wait_until(self, name, pred, timeout=10):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            st = self.status(name)
            if pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"{name}: condition not met: {self.status(name)}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.final_log = self.logs()
        self.log.close()
        return self.proc.returncode


def workers_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    alive.append(pid)
        except (OSError, IndexError):
            pass
    return alive


BASIC = f"""
devices: [{{host: true, budget: 1GiB}}]
defaults: {{keep_alive: 30s, host_keep_alive: 1m}}
limits: {{max_body_size: 64KiB}}
models:
  a:
    cmd: {worker("--alloc-mb", "16")}
    hooks:
      offload: {{path: /offload}}
      restore: {{path: /restore}}
      cleanup: {{path: /cleanup}}
    aliases: [gpt-test]
  q:
    cmd: {worker()}
    max_concurrency: 1
    max_queue: 0
  bad:
    cmd: {worker("--exit-early")}
    start_timeout: 10s
  nocmd:
    cmd: ["/nonexistent/worker-binary", "--port", "${{PORT}}"]
  s:
    cmd: {worker()}
    request_buffering: false
"""


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(BASIC)
    yield daemon
    # A clean exit: under ASan a leak or an error would make it non-zero.
    assert daemon.stop() == 0, daemon.logs()[-3000:]


STATUS_FIELDS = ["name", "backend", "state", "location", "device", "is_loaded", "loaded_at",
                 "last_accessed", "idle_s", "keep_alive_s", "expires_at", "timer_active",
                 "inflight", "queued", "vram_bytes", "host_bytes", "pid", "error", "warnings",
                 "stats"]


def test_health_and_devices(d):
    code, h, _ = d.get("/health")
    assert code == 200
    for k in ("status", "version", "uptime_s", "active_jobs", "queued", "gpu_available",
              "devices"):
        assert k in h
    assert h["gpu_available"] is False and h["devices"][0]["name"] == "host"
    code, dev, _ = d.get("/api/devices")
    assert code == 200 and dev["devices"][0]["budget_bytes"] == 1 << 30
    assert dev["host_tier"]["budget_bytes"] > 0 and dev["host_tier"]["used_bytes"] >= 0


def test_cold_then_warm_request(d):
    code, body, hdr = d.post("/m/a/infer", {"x": 1})
    assert code == 200 and body["echo"] == {"x": 1} and body["model"] == "a"
    assert float(hdr["X-Modelbuf-Load-Ms"]) > 0  # this request loaded it
    code, body2, hdr = d.post("/m/a/infer", {"x": 2})
    assert code == 200 and float(hdr["X-Modelbuf-Load-Ms"]) == 0  # warm
    assert body2["pid"] == body["pid"]
    st = d.status("a")
    for k in STATUS_FIELDS:
        assert k in st, k
    assert st["state"] == "ready" and st["location"] == "gpu" and st["is_loaded"]
    assert st["pid"] == body["pid"] and st["vram_bytes"] >= 16 << 20
    assert st["stats"]["loads"] == 1 and st["stats"]["requests"] >= 2
    # The lease ends just after the answer: then the idle timer runs.
    st = d.wait_until("a", lambda s: s["inflight"] == 0)
    assert st["timer_active"] is True and st["expires_at"]


def test_openai_routes_by_model_and_alias(d):
    code, body, _ = d.post("/v1/chat/completions", {"model": "gpt-test", "messages": []})
    assert code == 200 and body["path"] == "/v1/chat/completions" and body["model"] == "a"
    code, lst, _ = d.get("/v1/models")
    ids = [m["id"] for m in lst["data"]]
    assert lst["object"] == "list" and "a" in ids and "gpt-test" in ids
    code, err, _ = d.post("/v1/embeddings", {"model": "nope", "input": "x"})
    assert code == 404 and err["error"]["code"] == "not_found"
    code, err, _ = d.post("/v1/embeddings", {"input": "x"})
    assert code == 400
    # multipart (audio): the model comes from the form field
    boundary = "XyZ"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-test\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}--\r\n").encode()
    code, body, _ = d.request("POST", "/v1/audio/transcriptions", body=form, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert code == 200 and body["path"] == "/v1/audio/transcriptions"


def test_streaming_arrives_chunk_by_chunk(d):
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30 * SLOW)
    t0 = time.time()
    c.request("GET", "/m/a/stream?n=5&ms=300")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    first = r.readline()
    t_first = time.time() - t0
    rest = r.read()
    total = time.time() - t0
    c.close()
    assert first.startswith(b"data: {\"token\": 0")
    assert b"[DONE]" in rest
    # The first token came long before the stream ended (5 x 300 ms).
    assert t_first < total - 0.8


def upload_slowly(d, model, piece, pieces):
    """Sends pieces of a body 100 ms apart; the worker's answer, and when
    the client finished sending."""
    sent = {}

    def body():
        for i in range(pieces):
            if i:
                time.sleep(0.1)
            yield piece
        sent["end"] = time.time()  # the last piece is written

    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60 * SLOW)
    c.request("POST", f"/m/{model}/upload", body=body(),
              headers={"Content-Length": str(len(piece) * pieces)})
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    assert r.status == 200, doc
    assert doc["bytes"] == len(piece) * pieces
    assert doc["sum"] == (sum(piece) * pieces) % (1 << 32)
    return doc, sent["end"]


def test_request_body_streams_to_the_worker(d):
    # 32 KiB sent in 16 pieces, 100 ms apart. With request_buffering: false
    # the worker starts reading long before the client has finished sending,
    # and gets every byte.
    piece = bytes(range(256)) * 8
    doc, end = upload_slowly(d, "s", piece, 16)
    assert doc["started"] < end - 0.5  # streamed, not buffered first
    # Buffered (the default): the worker sees the request only once the
    # whole body is in, so a slow client never holds the model.
    doc, end = upload_slowly(d, "a", piece, 16)
    assert doc["started"] >= end - 0.05
    # Over the body limit (64 KiB here) while streaming: 413, the worker unharmed.
    big = b"x" * (200 * 1024)
    code, err, _ = d.request("POST", "/m/s/upload", body=big)
    assert code == 413 and err["error"]["code"] == "too_large"
    assert d.post("/m/a/infer", {"after": 1})[0] == 200


def test_slow_reader_does_not_hold_the_model(d):
    # 48 MiB answered to a client that reads nothing for a while: the
    # daemon keeps what the client has not taken (memory, then a temporary
    # file), so the worker finishes and the lease is released at once; the
    # client then gets every byte.
    assert d.post("/api/models/a/load")[0] == 200
    before = d.status("a")["stats"]["requests"]
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"GET /m/a/big?mb=48 HTTP/1.1\r\nHost: x\r\n\r\n")
    d.wait_until("a", lambda st: st["stats"]["requests"] > before)
    st = d.wait_until("a", lambda st: st["inflight"] == 0, timeout=20)
    assert st["state"] == "ready"
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 50331648" in head
    n = len(body)
    sample = body[:256]
    while n < 48 << 20:
        b = s.recv(1 << 20)
        assert b, "the answer was cut"
        n += len(b)
    s.close()
    assert n == 48 << 20 and sample == bytes(range(256))[:len(sample)]


def test_offload_restore_unload_keep_alive(d):
    d.post("/m/a/infer", {})
    code, st, _ = d.post("/api/models/a/offload")
    assert code == 200 and st["state"] == "offloaded" and st["location"] == "cpu"
    assert st["host_bytes"] > 0 and st["vram_bytes"] == 0
    code, st, _ = d.post("/api/models/a/load", {"keep_alive": "forever"})
    assert code == 200 and st["state"] == "ready" and st["stats"]["restores"] >= 1
    assert st["keep_alive_s"] == -1 and st["timer_active"] is False
    code, st, _ = d.post("/api/models/a/keep-alive", {"keep_alive": "10m"})
    assert code == 200 and st["keep_alive_s"] == 600 and st["timer_active"] is True
    code, st, _ = d.post("/api/models/a/unload")
    assert code == 200 and st["state"] == "unloaded" and st["pid"] is None
    code, st, _ = d.post("/api/models/a/load", {"wait": False})
    assert code == 202
    d.wait_state("a", ["ready"])
    code, err, _ = d.post("/api/models/q/offload")
    assert code == 409 and err["error"]["code"] in ("state_conflict", "not_supported")


def test_bad_input(d):
    assert d.get("/api/models/nope")[0] == 404
    assert d.post("/m/nope/x", {})[0] == 404
    assert d.get("/no/such/route")[0] == 404
    code, err, _ = d.request("POST", "/api/models/a/load", body=b"{not json")
    assert code == 400 and "malformed JSON" in err["error"]["message"]
    code, err, _ = d.post("/api/models/a/keep-alive", {"keep_alive": "soon"})
    assert code == 400
    code, err, _ = d.request("POST", "/m/a/infer", body=b"x" * (100 * 1024))
    assert code == 413 and err["error"]["code"] == "too_large"
    code, err, _ = d.post("/m/a/infer", {}, headers={"X-Modelbuf-Priority": "high"})
    assert code == 400


def test_failed_worker_reports_its_output(d):
    code, err, _ = d.post("/m/bad/infer", {})
    assert code == 502 and err["error"]["code"] == "load_failed"
    assert "exited with status 3" in err["error"]["message"]
    assert "cannot load weights" in err["error"]["message"]
    st = d.status("bad")
    assert st["state"] == "failed" and "cannot load weights" in st["error"]
    # A command that does not exist: the same, with the reason.
    code, err, _ = d.post("/m/nocmd/infer", {})
    assert code == 502 and "cannot run the worker's command" in err["error"]["message"]
    assert "No such file" in err["error"]["message"]


def test_queue_full_answers_503(d):
    results = {}
    assert d.post("/api/models/q/load")[0] == 200  # max_queue 0: no waiting, even for a load

    def slow():
        results["slow"] = d.get("/m/q/slow?ms=1500")[0]

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.time() + 15 * SLOW
    while d.status("q")["inflight"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    code, err, hdr = d.get("/m/q/slow?ms=1")
    t.join()
    assert results["slow"] == 200
    assert code == 503 and err["error"]["code"] == "queue_full" and hdr["Retry-After"] == "1"


def test_client_disconnect_releases_the_lease(d):
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"GET /m/a/stream?n=100&ms=100 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"data:" in s.recv(4096) or b"data:" in s.recv(4096)
    assert d.status("a")["inflight"] == 1
    s.close()
    deadline = time.time() + 10 * SLOW
    while d.status("a")["inflight"] != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert d.status("a")["inflight"] == 0


def test_leases_over_http(d):
    code, l, _ = d.post("/api/models/a/acquire", {"ttl": 1})
    assert code == 200 and l["url"].startswith("http://127.0.0.1:") and l["expires_at"]
    assert d.status("a")["inflight"] == 1
    code, r, _ = d.post(f"/api/leases/{l['lease']}/renew", {"ttl": 2})
    assert code == 200
    deadline = time.time() + 10 * SLOW
    while d.status("a")["inflight"] != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert d.status("a")["inflight"] == 0  # the TTL expired: the core released it
    assert d.request("DELETE", f"/api/leases/{l['lease']}")[0] == 404
    code, l2, _ = d.post("/api/models/a/acquire", {"ttl": "30s"})
    assert code == 200 and d.status("a")["inflight"] == 1
    assert d.request("DELETE", f"/api/leases/{l2['lease']}")[0] == 200
    d.wait_until("a", lambda st: st["inflight"] == 0)  # the release is posted to the core


def test_events_stream(d):
    d.post("/api/models/a/unload")
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30 * SLOW)
    c.request("GET", "/api/events")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    threading.Thread(target=lambda: d.post("/m/a/infer", {})).start()
    seen = []
    deadline = time.time() + 30 * SLOW
    while len(seen) < 2 and time.time() < deadline:
        line = r.readline().decode()
        if line.startswith("data: "):
            ev = json.loads(line[6:])
            if ev["model"] == "a" and ev["type"] == "state":
                seen.append((ev["from"], ev["to"], ev["reason"]))
    c.close()
    assert seen == [("unloaded", "loading", "acquire"), ("loading", "ready", "loaded")]


def test_metrics_and_logs_and_compat(d):
    d.post("/m/a/infer", {})
    code, text, hdr = d.get("/metrics")
    assert code == 200 and hdr["Content-Type"].startswith("text/plain")
    names = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        float(value)
        names.add(name.split("{")[0])
    for n in ("modelbuf_model_state", "modelbuf_loads_total", "modelbuf_requests_total",
              "modelbuf_load_seconds_bucket", "modelbuf_queue_wait_seconds_bucket",
              "modelbuf_inflight", "modelbuf_queued", "modelbuf_device_free_bytes"):
        assert n in names, n
    node = d.get("/health")[1]["node"]
    assert f'modelbuf_model_state{{model="a",state="ready",node="{node}"}} 1' in text
    code, logs, _ = d.get("/api/models/a/logs")
    assert code == 200 and "test_worker a starting" in logs
    code, gs, _ = d.get("/api/gpu/status")
    st = gs["models"]["a"]
    assert st["model_location"] == "GPU"
    for k in ("total_loads", "gpu_to_cpu", "cpu_to_gpu", "full_releases"):
        assert k in st["statistics"]
    code, out, _ = d.post("/api/gpu/offload", {"model": "a"})
    assert code == 200 and d.status("a")["state"] == "offloaded"
    code, out, _ = d.post("/cleanup-memory")
    assert code == 200 and "devices" in out


def test_trace_export_replays_in_the_simulator(d):
    for i in range(3):
        assert d.post("/m/a/infer", {"i": i})[0] == 200
    code, text, hdr = d.get("/api/trace")
    assert code == 200 and hdr["Content-Type"] == "text/csv"
    lines = text.strip().splitlines()
    assert lines[0] == "t,model,duration" and len(lines) >= 4
    rows = [l.split(",") for l in lines[1:]]
    ts = [float(r[0]) for r in rows]
    assert ts == sorted(ts) and ts[0] == 0.0
    assert all(r[1] in ("a", "q", "s", "beta") for r in rows) and all(float(r[2]) >= 0 for r in rows)
    # The simulator replays it with a model table for these models.
    trace = os.path.join(d.dir, "trace.csv")
    with open(trace, "w") as f:
        f.write(text)
    table = os.path.join(d.dir, "models.json")
    with open(table, "w") as f:
        json.dump({"format": "modelbuf-models/1", "models": [
            {"name": n, "footprint_bytes": 64 << 20, "load_ms": 300, "restore_ms": 30,
             "offload_ms": 30, "unload_ms": 10} for n in ("a", "q", "bad", "nocmd", "s")]}, f)
    tool = os.path.join(BUILD, "cli", "modelbuf")
    p = subprocess.run([tool, "sim", "--models", table, "--trace", trace, "--policy", "all",
                        "--devices", "1", "--capacity", "1GiB", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["requests"] == len(rows)
    assert [r["policy"] for r in out["results"]] == ["lru", "cost", "belady"]
    for r in out["results"]:
        assert r["served"] == len(rows) and r["failed"] == 0


def test_api_keys():
    daemon = Daemon(f"""api_keys: ["k1", "second-key"]
devices: [{{host: true}}]
models:
  a:
    cmd: {worker()}
""")
    try:
        assert daemon.get("/health")[0] == 200  # open
        code, err, _ = daemon.get("/api/models")
        assert code == 401 and err["error"]["code"] == "unauthorized"
        assert daemon.get("/api/models", headers={"Authorization": "Bearer k2"})[0] == 401
        assert daemon.get("/api/models", headers={"Authorization": "Bearer k1"})[0] == 200
        assert daemon.get("/api/models",
                          headers={"Authorization": "Bearer second-key"})[0] == 200
    finally:
        assert daemon.stop() == 0


def test_eviction_and_clean_stop():
    # Room for one model at a time: each holds 60 MiB of weights (measured
    # with the worker's RSS once loaded; declared 80 MiB before): the second
    # evicts the first.
    daemon = Daemon(f"""devices: [{{host: true, budget: 100MiB}}]
defaults: {{keep_alive: 5m, offload: false}}
models:
  x:
    cmd: {worker("--alloc-mb", "60")}
    vram: 80MiB
  y:
    cmd: {worker("--alloc-mb", "60")}
    vram: 80MiB
""")
    pids = []
    try:
        code, b, _ = daemon.post("/m/x/infer", {})
        assert code == 200
        pids.append(b["pid"])
        code, b, _ = daemon.post("/m/y/infer", {})
        assert code == 200
        pids.append(b["pid"])
        x = daemon.wait_state("x", ["unloaded"])
        assert x["stats"]["evictions"] == 1
        assert daemon.status("y")["state"] == "ready"
        assert workers_alive([pids[0]]) == []  # x's worker is gone
    finally:
        assert daemon.stop() == 0
    assert workers_alive(pids) == []
    assert "stopping" in daemon.logs()
