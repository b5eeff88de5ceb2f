"""modelbufd's GPU paths on two stand-in GPUs (tests/gpu_standin): the real
daemon with `devices: [{gpu: 0}, {gpu: 1}]`, loading the stand-in
libcuda.so.1 and libnvidia-ml.so.1 through LD_LIBRARY_PATH as it would a
driver, and C workers (gpu_worker) that allocate device memory through the
same stand-in in their own processes. Every figure is checked against the
stand-in machine's own table (standin_ctl show), as daemon_gpu.py checks a
real GPU against nvidia-smi:

  capacity measured from the driver; placement and CUDA_VISIBLE_DEVICES
  (also under a daemon whose own CUDA_VISIBLE_DEVICES reorders the GPUs);
  a worker's footprint from NVML; the wait until NVML no longer lists a
  stopped worker; admission against the measured footprint (a worker that
  takes more than it declares evicts another instead of failing); a
  hook-less worker offloaded and restored by the checkpoint API (same
  process, same answer), with the checkpoint or the restore failing; a
  driver without the API (refused, or the files kept in RAM); a tensors
  model on cuda:1 with every byte compared; a GPU that disappears; and the
  daemon leaves no driver handle behind."""
import atexit
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import BUILD, SLOW, Daemon, workers_alive  # noqa: E402

MiB = 1 << 20
CTX = 8 * MiB  # what a context costs on the stand-in
CTL = os.environ.get("MB_STANDIN_CTL")
WORKER = os.environ.get("MB_GPU_WORKER")
DIRS = (os.environ.get("MB_STANDIN_DIRS") or "").split(":")
CLI = os.path.join(BUILD, "cli", "modelbuf")

if not CTL or not WORKER or len(DIRS) < 3:
    pytest.skip("the stand-in GPU driver is not built (no cuda.h)", allow_module_level=True)

DATA = tempfile.mkdtemp(prefix="mb-gpu-standin-")
atexit.register(shutil.rmtree, DATA, True)
REPORT = os.path.join(DATA, "report.jsonl")
# The machine every process of this test shares: two GPUs, the second
# smaller; a stopped process holds its memory 1.5 s more.
os.environ.update({
    "MB_STANDIN_MACHINE": os.path.join(DATA, "machine"),
    "MB_STANDIN_GPUS": "2",
    "MB_STANDIN_GPU_MEM": "1GiB,512MiB",
    "MB_STANDIN_RELEASE_MS": "1500",
    "MB_STANDIN_REPORT": REPORT,
    "LD_LIBRARY_PATH": DIRS[0],
})
os.environ.pop("CUDA_VISIBLE_DEVICES", None)
BUS = ["0000:65:00.0", "0000:b3:00.0"]


def machine():
    out = subprocess.run([CTL, "show"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def proc(pid):
    for p in machine()["procs"]:
        if p["pid"] == pid:
            return p
    return None


def ctl(*args):
    subprocess.run([CTL, *args], check=True)


def gpu_worker(mb, *extra):
    args = [WORKER, "--port", "${PORT}", "--vram-mb", str(mb), "--model", "${MODEL}", *extra]
    return "[" + ", ".join(json.dumps(a) for a in args) + "]"


def mkmodel(name, size):
    path = os.path.join(DATA, name)
    subprocess.run([CLI, "mkmodel", "--format", "safetensors", "--size", size, "--seed", "5", path],
                   check=True, capture_output=True)
    return path


WEIGHTS = mkmodel("t.safetensors", "48MiB")
FILES = os.path.join(DATA, "w.bin")
with open(FILES, "wb") as f:
    f.write(os.urandom(4 * MiB))

CONFIG = f"""
devices: [{{gpu: 0}}, {{gpu: 1}}]
host_memory: 1GiB
defaults: {{keep_alive: 10m, host_keep_alive: 10m, start_timeout: 30s}}
models:
  w0:
    cmd: {gpu_worker(100)}
    device: 0
    vram: 120MiB
  w1:
    cmd: {gpu_worker(64)}
    device: 1
    vram: 80MiB
  big:
    cmd: {gpu_worker(300)}
    device: 1
    vram: 40MiB
  mid:
    cmd: {gpu_worker(240)}
    device: 1
    vram: 250MiB
  t1:
    backend: tensors
    files: [{WEIGHTS}]
    device: 1
"""


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CONFIG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]
    assert "mb-standin: misuse" not in daemon.final_log, daemon.final_log[-3000:]
    # the daemon's own handles of the driver, at its exit: none left
    with open(REPORT) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    mine = [r for r in lines if r["pid"] == daemon.proc.pid]
    assert mine, lines
    r = mine[-1]
    assert r["misuses"] == 0 and r["reclaimed"] == 0, r
    assert all(r[k] == 0 for k in ("stream", "event", "alloc", "host", "register", "reserve",
                                   "vmem", "map", "ctx")), r


def load(d, name):
    code, st, _ = d.post(f"/api/models/{name}/load")
    assert code == 200 and st["state"] == "ready", (code, st, d.logs()[-2000:])
    return st


def infer(d, name):
    code, body, _ = d.post(f"/m/{name}/infer", {})
    assert code == 200, (code, body)
    return body


def unload(d, name):
    code, st, _ = d.post(f"/api/models/{name}/unload")
    assert code == 200 and st["state"] == "unloaded", (code, st)


def test_devices_measured_from_the_driver(d):
    code, h, _ = d.get("/health")
    assert code == 200 and h["gpu_available"] is True
    code, dev, _ = d.get("/api/devices")
    names = [(x["name"], x["capacity_bytes"]) for x in dev["devices"]]
    assert names == [("cuda:0", 1024 * MiB), ("cuda:1", 512 * MiB)]


def test_placement_cuda_visible_devices_and_nvml_footprint(d):
    st = load(d, "w1")
    code, info, _ = d.get("/m/w1/info")
    assert code == 200
    # the worker sees one GPU, the daemon's cuda:1: the machine's second
    assert info["cuda_visible_devices"] == "1" and info["devices"] == 1
    assert info["bus"] == BUS[1] and info["pid"] == st["pid"]
    p = proc(st["pid"])
    assert p["dev"] == [0, 64 * MiB + CTX]
    # the daemon's figure is NVML's, the worker's whole footprint
    st = d.wait_until("w1", lambda s: s["vram_bytes"] == 64 * MiB + CTX)
    st = load(d, "w0")
    code, info, _ = d.get("/m/w0/info")
    assert info["cuda_visible_devices"] == "0" and info["bus"] == BUS[0]
    assert proc(st["pid"])["dev"] == [100 * MiB + CTX, 0]
    unload(d, "w0")


def test_unload_waits_until_nvml_shows_the_memory_back(d):
    st = load(d, "w1")
    pid = st["pid"]
    assert proc(pid) is not None
    unload(d, "w1")
    # the stand-in keeps a stopped process listed (and its memory held) for
    # 1.5 s after it ends; the unload answered only once NVML let it go
    assert proc(pid) is None, machine()
    assert machine()["gpus"][1]["used"] == 0


def test_admission_against_the_measured_footprint(d):
    # big declares 40 MiB but holds 308: once measured, loading it again
    # next to mid (250 MiB declared, 248 held) on the 512 MiB GPU evicts mid
    # first (to host memory, by the checkpoint API: mid has no hooks)
    # instead of starting a worker that could not get its memory
    load(d, "big")
    d.wait_until("big", lambda s: s["vram_bytes"] == 300 * MiB + CTX)
    st = d.status("big")
    assert "footprint_overrun" in st["warnings"], st
    unload(d, "big")
    mid = load(d, "mid")
    st = load(d, "big")
    assert d.status("mid")["state"] == "offloaded"
    assert d.status("mid")["stats"]["evictions"] == 1
    assert proc(mid["pid"])["state"] == "checkpointed"
    m = machine()
    assert m["gpus"][1]["used"] == 300 * MiB + CTX, m
    assert infer(d, "big")["pid"] == st["pid"]
    unload(d, "big")
    unload(d, "mid")
    assert machine()["gpus"][1]["used"] == 0


def test_memory_held_outside_the_daemon(d):
    # Admission counts the capacity measured at start and the models'
    # footprints, not what other processes hold: a worker that cannot get
    # its memory fails its load with its own words, and loads once the
    # memory is back.
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); "
                           "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="1")
    other = subprocess.Popen([WORKER, "--port", port, "--vram-mb", "400", "--model", "other"],
                             env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20 * SLOW
        while proc(other.pid) is None or proc(other.pid)["dev"][1] != 400 * MiB + CTX:
            assert time.time() < deadline, machine()
            time.sleep(0.05)
        code, body, _ = d.post("/api/models/big/load")
        assert code == 502, (code, body)
        assert "cuMemAlloc failed (CUDA error 2)" in json.dumps(body), body
    finally:
        other.kill()
        other.wait()
    st = d.wait_state("big", ["failed", "unloaded"])
    deadline = time.time() + 20 * SLOW
    while machine()["gpus"][1]["used"] != 0:  # the stand-in's release delay
        assert time.time() < deadline, machine()
        time.sleep(0.05)
    deadline = time.time() + 20 * SLOW
    while True:  # a failed load is retried after its back-off (1 s)
        code, body, _ = d.post("/api/models/big/load")
        if code == 200 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert code == 200, (code, body)
    unload(d, "big")


def test_hookless_worker_offloaded_by_the_checkpoint_api(d):
    st = load(d, "w0")
    pid = st["pid"]
    before = infer(d, "w0")
    code, st, _ = d.post("/api/models/w0/offload")
    assert code == 200 and st["state"] == "offloaded", (code, st)
    p = proc(pid)
    assert p["state"] == "checkpointed" and p["dev"] == [0, 0], p
    assert p["saved"][0] == 100 * MiB + CTX
    assert workers_alive([pid]) == [pid]
    assert machine()["gpus"][0]["used"] == 0
    st = d.wait_until("w0", lambda s: s["vram_bytes"] == 0)
    after = infer(d, "w0")  # restores first
    assert after == before  # same process, same answer
    st = d.status("w0")
    assert st["state"] == "ready" and st["stats"]["restores"] == 1
    assert proc(pid)["state"] == "running" and proc(pid)["dev"][0] == 100 * MiB + CTX


def test_checkpoint_failure_unloads_the_worker(d):
    st = d.status("w0")
    if st["state"] != "ready":
        st = load(d, "w0")
    pid = st["pid"]
    ctl("fail", str(d.proc.pid), "cuCheckpointProcessCheckpoint:1:999")
    try:
        code, body, _ = d.post("/api/models/w0/offload")
    finally:
        ctl("fail", str(d.proc.pid), "")
    # the offload was tried and failed: the worker's failure, with the reason
    assert code == 502 and "no offload hook" in json.dumps(body), (code, body)
    code, logs, _ = d.get("/api/models/w0/logs")
    assert "CUDA checkpoint failed" in json.dumps(logs)
    # as after any failed offload the core unloads the model: the worker is
    # stopped (unlocked first, or it could not take SIGTERM's exit path) and
    # its memory is back once the unload is done
    d.wait_state("w0", ["unloaded"])
    assert workers_alive([pid]) == []
    assert proc(pid) is None
    assert machine()["gpus"][0]["used"] == 0


def test_checkpoint_restore_failure_restarts_the_worker(d):
    st = d.status("w0")
    if st["state"] != "ready":
        st = load(d, "w0")
    pid = st["pid"]
    before = infer(d, "w0")
    code, st, _ = d.post("/api/models/w0/offload")
    assert code == 200 and st["state"] == "offloaded"
    ctl("fail", str(d.proc.pid), "cuCheckpointProcessRestore:1:2")
    try:
        after = infer(d, "w0")
    finally:
        ctl("fail", str(d.proc.pid), "")
    assert after["pid"] != pid and after["sum"] == before["sum"]
    assert workers_alive([pid]) == []
    code, logs, _ = d.get("/api/models/w0/logs")
    assert "CUDA checkpoint restore failed" in json.dumps(logs)
    unload(d, "w0")
    assert proc(after["pid"]) is None


def tensors_equal(d, name, path=None):
    """Every tensor of the safetensors file path (WEIGHTS) as model name
    serves it: equal to the file, byte for byte."""
    path = path or WEIGHTS
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    for tname, t in header.items():
        if tname == "__metadata__":
            continue
        a, b = t["data_offsets"]
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60 * SLOW)
        c.request("GET", f"/m/{name}/tensors/" + urllib.parse.quote(tname, safe=""))
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 200
        with open(path, "rb") as f:
            f.seek(base + a)
            assert body == f.read(b - a), tname


def test_tensors_model_on_cuda1_every_byte(d):
    used0 = machine()["gpus"][1]["used"]
    st = load(d, "t1")
    arena = st["vram_bytes"]
    assert arena > 48 * MiB
    me = proc(d.proc.pid)
    assert me["dev"][1] == arena + CTX  # the daemon's own process, on GPU 1
    tensors_equal(d, "t1")
    code, st, _ = d.post("/api/models/t1/offload")
    assert code == 200 and st["state"] == "offloaded"
    assert proc(d.proc.pid)["dev"][1] == CTX  # the arena went, the context stays
    load(d, "t1")
    tensors_equal(d, "t1")
    unload(d, "t1")
    # no model holds the GPU: the context went too
    me = proc(d.proc.pid)
    assert me is None or me["dev"][1] == 0, me
    assert machine()["gpus"][1]["used"] == used0


def test_tensors_model_restored_on_the_other_gpu():
    """A tensors model of device auto, offloaded from cuda:0, comes back on
    cuda:1 when cuda:0 has no room for it (another model is held there):
    a restore, not a load, every byte equal, its arena off cuda:0."""
    weights2 = mkmodel("t2.safetensors", "64MiB")
    config = f"""
devices: [{{gpu: 0, budget: 100MiB}}, {{gpu: 1, budget: 100MiB}}]
host_memory: 1GiB
defaults: {{keep_alive: 10m, host_keep_alive: 10m}}
models:
  ta:
    backend: tensors
    files: [{WEIGHTS}]
  tb:
    backend: tensors
    files: [{weights2}]
    device: 0
"""
    d = other_daemon(config)
    try:
        st = load(d, "ta")
        assert st["device"] == "cuda:0", st  # best fit among equals: the first
        arena = st["vram_bytes"]
        code, st, _ = d.post("/api/models/ta/offload")
        assert code == 200 and st["state"] == "offloaded", (code, st)
        code, lease, _ = d.post("/api/models/tb/acquire", {"ttl": "60s"})
        assert code == 200, (code, lease)
        assert d.status("tb")["device"] == "cuda:0"
        st = load(d, "ta")  # 48 + 64 MiB do not fit cuda:0's 100 MiB: cuda:1
        assert st["device"] == "cuda:1", st
        assert st["stats"]["restores"] == 1 and st["stats"]["loads"] == 1, st["stats"]
        assert d.status("tb")["state"] == "ready"  # nothing evicted
        tensors_equal(d, "ta")
        me = proc(d.proc.pid)
        assert me["dev"][1] == arena + CTX, me  # ta's arena, on cuda:1
        assert me["dev"][0] == d.status("tb")["vram_bytes"] + CTX, me  # tb's only
        code, _, _ = d.request("DELETE", "/api/leases/" + lease["lease"])
        assert code == 200
        unload(d, "ta")
        unload(d, "tb")
    finally:
        assert d.stop() == 0, d.logs()[-3000:]
        assert "mb-standin: misuse" not in d.final_log, d.final_log[-3000:]


def test_a_gpu_that_disappears(d):
    ctl("lose", "1")
    try:
        code, body, _ = d.post("/api/models/t1/load")
        assert code >= 500, (code, body)
        assert "cuda" in json.dumps(body).lower()
        assert d.get("/health")[0] == 200
    finally:
        ctl("lose", "1", "0")
    st = d.wait_state("t1", ["failed", "unloaded"])
    assert st["state"] in ("failed", "unloaded")


def other_daemon(config, lib=None, env=None):
    """A daemon started with another driver (lib: a stand-in folder) or
    environment."""
    saved = dict(os.environ)
    try:
        if lib:
            os.environ["LD_LIBRARY_PATH"] = lib
        os.environ.update(env or {})
        return Daemon(config)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_driver_without_the_checkpoint_api():
    config = f"""
devices: [{{gpu: 0}}]
defaults: {{keep_alive: 10m, host_keep_alive: 10m, start_timeout: 30s}}
models:
  plain:
    cmd: {gpu_worker(32)}
  filed:
    cmd: {gpu_worker(32)}
    files: [{FILES}]
"""
    d = other_daemon(config, lib=DIRS[1])
    try:
        load(d, "plain")
        code, body, _ = d.post("/api/models/plain/offload")
        # without the API (and without hooks or files) the model cannot offload
        assert code == 409 and "cannot offload" in json.dumps(body), (code, body)
        st = load(d, "filed")
        before = infer(d, "filed")
        code, st2, _ = d.post("/api/models/filed/offload")
        assert code == 200 and st2["state"] == "offloaded"
        assert proc(st["pid"]) is None  # stopped (and waited for), its files kept in RAM
        after = infer(d, "filed")
        assert after["pid"] != before["pid"] and after["sum"] == before["sum"]
    finally:
        assert d.stop() == 0, d.logs()[-3000:]
        assert "mb-standin: misuse" not in d.final_log, d.final_log[-3000:]


def test_devices_omitted_and_a_reordered_cuda_visible_devices():
    config = f"""
defaults: {{keep_alive: 10m, start_timeout: 30s}}
models:
  a:
    cmd: {gpu_worker(16)}
    device: 0
"""
    d = other_daemon(config, env={"CUDA_VISIBLE_DEVICES": "1,0"})
    try:
        code, dev, _ = d.get("/api/devices")
        # every GPU the driver shows, in its order: the daemon's cuda:0 is
        # the machine's second GPU
        assert [(x["name"], x["capacity_bytes"]) for x in dev["devices"]] == [
            ("cuda:0", 512 * MiB), ("cuda:1", 1024 * MiB)]
        load(d, "a")
        code, info, _ = d.get("/m/a/info")
        assert info["cuda_visible_devices"] == "1" and info["bus"] == BUS[1]
    finally:
        assert d.stop() == 0, d.logs()[-3000:]
        assert "mb-standin: misuse" not in d.final_log, d.final_log[-3000:]
