#!/usr/bin/env python3
"""daemon_gpu.py - modelbufd end to end on a GPU (run by `make test-gpu`).

What the host-device tests cannot show, checked against the GPU's own
figures (nvidia-smi) rather than the daemon's:

  1. /health sees the GPU, with its memory.
  2. A PyTorch worker with offload/restore hooks (examples/workers/
     torch_server.py, ~1.2 GB of float32 weights): it loads on cuda:0, the
     daemon's vram_bytes (NVML) matches nvidia-smi's figure for the worker's
     process, offload frees most of it on the GPU, and the restored model
     answers exactly as before.
  3. The same worker without hooks: offload goes through the driver's CUDA
     checkpoint API (the process keeps running, its GPU memory is released)
     and restore brings it back in the same process with the same answer;
     where the driver has no checkpoint API the offload is refused (409).
  4. A tensors model on cuda:0 (a 2 GiB synthetic safetensors file): the
     bytes of tensors read back from the GPU equal the file's, before and
     after an offload/restore; the daemon's GPU memory grows by the arena
     and shrinks back after offload and unload.
  5. After the daemon stops, the GPU's used memory is back at its figure
     from before the test.

Prints "ok:", "skip:" or "FAIL:" per check and the load/offload/restore
times the daemon measured; exits 0 when all passed, 1 on a failure, 77
without a GPU. --host runs the same flow on a machine without a GPU (the
host device; the checks that need nvidia-smi are skipped), to try the
script itself.

Usage: daemon_gpu.py [--build DIR] [--host] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1024 * 1024
failures = []


def ok(msg):
    print("ok:", msg, flush=True)


def skip(msg):
    print("skip:", msg, flush=True)


def fail(msg):
    print("FAIL:", msg, flush=True)
    failures.append(msg)


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, timeout=600):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method, path, body=None, timeout=600):
        st, raw = self.call(method, path, body, timeout)
        try:
            return st, json.loads(raw)
        except ValueError:
            return st, {"raw": raw[:300].decode("utf-8", "replace")}

    def status(self, name):
        return self.json("GET", "/api/models/" + name)[1]


# --- the GPU's own figures ------------------------------------------------

def smi(*args):
    r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
    return r.stdout if r.returncode == 0 else None


def gpu_used_mib():
    out = smi("--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0")
    return int(out.split()[0]) if out else None


def proc_mib():
    """{pid: MiB} of every compute process on the GPU, as nvidia-smi sees them."""
    out = smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    res = {}
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            res[int(parts[0])] = int(parts[1])
    return res


def has_gpu():
    if shutil.which("nvidia-smi") is None:
        return False, "nvidia-smi not found"
    out = smi("-L")
    if not out or "GPU 0" not in out:
        return False, "nvidia-smi lists no GPU"
    return True, out.strip().splitlines()[0]


# --- weight files ---------------------------------------------------------

def safetensors_index(path):
    """{name: (offset in file, bytes)} from a safetensors header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    base = 8 + n
    return {k: (base + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in hdr.items() if k != "__metadata__"}


def file_bytes(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def wait_state(api, name, want, secs=120):
    t = time.time() + secs
    st = {}
    while time.time() < t:
        st = api.status(name)
        if st.get("state") in want:
            return st
        time.sleep(0.2)
    return st


# --- the checks -----------------------------------------------------------

def check_health(api, gpu):
    st, h = api.json("GET", "/health")
    check(st == 200, "GET /health answers 200")
    devs = h.get("devices", [])
    if gpu:
        check(h.get("gpu_available") is True and devs and devs[0].get("capacity_bytes", 0) > 0,
              f"the daemon sees the GPU: {devs[0].get('name') if devs else None}, "
              f"capacity {devs[0].get('capacity_bytes', 0) / 2**30 if devs else 0:.1f} GiB")
    else:
        check(bool(devs), "the daemon has its host device")


def completion(api, model):
    st, r = api.json("POST", "/v1/completions",
                     {"model": model, "prompt": "modelbuf keeps models", "max_tokens": 12})
    text = r.get("choices", [{}])[0].get("text") if st == 200 else None
    return st, text, r


def check_torch(api, name, gpu, hooks):
    what = f"{name} ({'hooks' if hooks else 'no hooks'})"
    st, t1, r = completion(api, name)
    if not check(st == 200 and t1 is not None, f"{what}: first completion (cold load) answers: {r}"):
        return
    s = api.status(name)
    pid = s.get("pid")
    print(f"  {what}: loaded on {s.get('device')} in {s['stats']['last_load_ms']:.0f} ms, "
          f"vram_bytes {s.get('vram_bytes', 0) / MiB:.0f} MiB, pid {pid}", flush=True)
    before = None
    if gpu:
        check(s.get("device") not in (None, "host"), f"{what}: placed on a GPU ({s.get('device')})")
        before = proc_mib().get(pid)
        if check(before is not None and before > 1000,
                 f"{what}: nvidia-smi shows the worker's process with {before} MiB"):
            daemon = s.get("vram_bytes", 0) / MiB
            check(abs(daemon - before) <= max(256, 0.1 * before),
                  f"{what}: the daemon's vram_bytes {daemon:.0f} MiB match nvidia-smi's {before} MiB")
    st, body = api.json("POST", f"/api/models/{name}/offload")
    if not hooks and not gpu:
        check(st == 409, f"{what}: offload without hooks, files or a GPU is refused (409): {body}")
        return
    if not hooks and st == 409:
        # Refused: either the driver has no checkpoint API, or it has one and
        # the checkpoint failed (the daemon says so in the worker's log).
        _, logs = api.call("GET", f"/api/models/{name}/logs")
        tried = [l for l in logs.decode("utf-8", "replace").splitlines()
                 if "CUDA checkpoint" in l]
        if tried:
            fail(f"{what}: the CUDA checkpoint failed: {tried[-1]}")
        else:
            ok(f"{what}: this driver has no CUDA checkpoint API; offload refused (409): {body}")
        return
    if not check(st == 200 and body.get("state") == "offloaded",
                 f"{what}: offload answers 200, offloaded: {st} {body}"):
        return
    s = api.status(name)
    print(f"  {what}: offloaded in {s['stats']['last_offload_ms']:.0f} ms, "
          f"host_bytes {s.get('host_bytes', 0) / MiB:.0f} MiB", flush=True)
    if gpu:
        after = proc_mib().get(pid, 0)
        # hooks: torch keeps its CUDA context (a few hundred MiB) and frees
        # the ~1150 MiB of weights; checkpoint: the driver releases all of
        # the process's GPU memory.
        limit = before - 800 if hooks else 64
        check(after <= limit, f"{what}: the worker's GPU memory fell from {before} to {after} MiB "
                              f"(at most {limit})")
        if not hooks:
            alive = os.path.exists(f"/proc/{pid}")
            check(alive, f"{what}: the checkpointed worker {pid} still runs")
    st, t2, r = completion(api, name)
    s = api.status(name)
    check(st == 200 and t2 == t1,
          f"{what}: after restore ({s['stats']['last_restore_ms']:.0f} ms) the answer is the same: "
          f"{t2!r} vs {t1!r}")
    if not hooks and gpu:
        check(s.get("pid") == pid, f"{what}: restored in the same process ({s.get('pid')} vs {pid})")
    if gpu:
        back = proc_mib().get(s.get("pid"), 0)
        check(back >= before - 256, f"{what}: back on the GPU: {back} MiB (was {before})")


def check_tensors(api, name, path, gpu, daemon_pid):
    idx = safetensors_index(path)
    names = sorted(idx, key=lambda k: idx[k][0])
    picks = [names[0], names[len(names) // 2], names[-1]]
    base = proc_mib().get(daemon_pid, 0) if gpu else 0
    st, body = api.json("POST", f"/api/models/{name}/load")
    if not check(st == 200 and body.get("state") == "ready", f"{name}: load: {st} {body}"):
        return
    s = api.status(name)
    st, lst = api.json("GET", f"/m/{name}/tensors")
    arena = lst.get("arena_bytes", 0)
    gbps = arena / (s["stats"]["last_load_ms"] / 1e3) / 1e9 if s["stats"]["last_load_ms"] else 0
    print(f"  {name}: {arena / MiB:.0f} MiB arena loaded on {s.get('device')} in "
          f"{s['stats']['last_load_ms']:.0f} ms ({gbps:.2f} GB/s through the daemon)", flush=True)
    check(s.get("vram_bytes") == arena, f"{name}: vram_bytes {s.get('vram_bytes')} = arena {arena}")

    def compare(when):
        for t in picks:
            off, n = idx[t]
            st, got = api.call("GET", f"/m/{name}/tensors/{t}")
            if not check(st == 200 and got == file_bytes(path, off, n),
                         f"{name}: {when}: tensor {t} ({n} bytes) read from the device equals the file"):
                return

    compare("after load")
    if gpu:
        on = proc_mib().get(daemon_pid, 0)
        check(on - base >= arena / MiB * 0.95,
              f"{name}: the daemon's GPU memory grew by {on - base} MiB for a {arena / MiB:.0f} MiB arena")
    st, body = api.json("POST", f"/api/models/{name}/offload")
    check(st == 200 and body.get("state") == "offloaded", f"{name}: offload: {st}")
    s = api.status(name)
    off_gbps = arena / (s["stats"]["last_offload_ms"] / 1e3) / 1e9 if s["stats"]["last_offload_ms"] else 0
    print(f"  {name}: offloaded in {s['stats']['last_offload_ms']:.0f} ms ({off_gbps:.2f} GB/s)", flush=True)
    if gpu:
        # The daemon keeps its CUDA context while the model is offloaded
        # (the host copy is registered with it): the arena is what goes.
        now = proc_mib().get(daemon_pid, 0)
        check(on - now >= arena / MiB * 0.95,
              f"{name}: offload freed {on - now} MiB on the GPU for a {arena / MiB:.0f} MiB arena")
    st, body = api.json("POST", f"/api/models/{name}/load")
    s = api.status(name)
    res_gbps = arena / (s["stats"]["last_restore_ms"] / 1e3) / 1e9 if s["stats"]["last_restore_ms"] else 0
    print(f"  {name}: restored in {s['stats']['last_restore_ms']:.0f} ms ({res_gbps:.2f} GB/s)", flush=True)
    compare("after offload and restore")
    st, body = api.json("POST", f"/api/models/{name}/unload")
    check(st == 200 and body.get("state") == "unloaded", f"{name}: unload: {st}")
    if gpu:
        time.sleep(0.5)
        now = proc_mib().get(daemon_pid, 0)
        # No model holds the GPU any longer: the context goes too.
        check(now - base <= 64, f"{name}: unloaded, the daemon holds {now - base} MiB more than before the load")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--host", action="store_true", help="run on the host device (no GPU)")
    ap.add_argument("--keep", help="keep the work folder here (for the logs)")
    a = ap.parse_args()
    gpu, why = has_gpu()
    if not gpu and not a.host:
        print(f"SKIP: {why}")
        return 77
    print("GPU:", why if gpu else "none (--host: the host device)", flush=True)
    daemon = os.path.join(a.build, "daemon", "modelbufd")
    tool = os.path.join(a.build, "cli", "modelbuf")
    for f in (daemon, tool):
        if not os.access(f, os.X_OK):
            print(f"FAIL: {f} is not built")
            return 1
    # Packed by scripts/gpu-bundle.sh: its libraries for modelbufd and
    # modelbuf only; the workers keep this machine's environment.
    env = dict(os.environ)
    worker_env = {"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")}
    if os.environ.get("MB_BUNDLE_LIB"):
        env["LD_LIBRARY_PATH"] = os.environ["MB_BUNDLE_LIB"] + (
            ":" + worker_env["LD_LIBRARY_PATH"] if worker_env["LD_LIBRARY_PATH"] else "")
    work = a.keep or tempfile.mkdtemp(prefix="mb_daemon_gpu_", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    weights = os.path.join(work, "w.safetensors")
    subprocess.run([tool, "mkmodel", "--format", "safetensors", "--size",
                    "2GiB" if gpu else "256MiB", weights], check=True, stdout=subprocess.DEVNULL,
                   env=env)
    port = free_port()
    worker = [sys.executable, os.path.join(ROOT, "examples/workers/torch_server.py"),
              "--port", "${PORT}", "--dim", "2048" if gpu else "256", "--layers", "6" if gpu else "2",
              "--heads", "16" if gpu else "4", "--max-len", "128"]
    hooks = {"offload": {"method": "POST", "path": "/offload"},
             "restore": {"method": "POST", "path": "/restore"}}
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "host_memory": "16GiB",
        "defaults": {"keep_alive": -1, "start_timeout": "5m", "max_concurrency": 1},
        "models": {
            "th": {"cmd": worker, "vram": "4GiB", "hooks": hooks, "env": worker_env},
            "tn": {"cmd": worker, "vram": "4GiB", "env": worker_env},
            "w": {"backend": "tensors", "files": [weights]},
        },
    }
    cfg_path = os.path.join(work, "modelbuf.yaml")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)  # JSON is YAML
    used0 = gpu_used_mib() if gpu else None
    log = open(os.path.join(work, "modelbufd.log"), "w")
    d = subprocess.Popen([daemon, "--config", cfg_path], stdout=log, stderr=subprocess.STDOUT,
                         cwd=ROOT, env=env)
    api = Api(f"http://127.0.0.1:{port}")
    try:
        for _ in range(200):
            try:
                if api.call("GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        check_health(api, gpu)
        check_torch(api, "th", gpu, hooks=True)
        api.json("POST", "/api/models/th/unload")
        check_torch(api, "tn", gpu, hooks=False)
        api.json("POST", "/api/models/tn/unload")
        check_tensors(api, "w", weights, gpu, d.pid)
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=60)
        except subprocess.TimeoutExpired:
            d.kill()
            fail("modelbufd did not stop within 60 s of SIGTERM")
        log.close()
    check(d.returncode == 0, f"modelbufd stopped cleanly (exit {d.returncode})")
    if gpu:
        time.sleep(1)
        used1 = gpu_used_mib()
        check(used1 is not None and used1 - used0 <= 128,
              f"the GPU's used memory is back: {used1} MiB after, {used0} MiB before")
    if failures:
        print(f"--- modelbufd's log ({log.name}):")
        with open(log.name) as f:
            print("".join(f.readlines()[-40:]))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(("PASS" if not failures else f"FAIL: {len(failures)} check(s)") + " (daemon_gpu)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
