"""The process backend (daemon/worker.c) with real worker processes, driven
through the real modelbufd: stop escalation to SIGKILL, no zombies or
orphans, ${PORT}/${MODEL}/${GPU} substitution, env and cwd,
CUDA_VISIBLE_DEVICES on the host device, start timeout, hook failures,
busy_timeout, the hook-less host tier and RSS of a worker holding a known
amount of memory. Also the example PyTorch worker, directly and through the
daemon."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from test_daemon import SLOW, Daemon, free_port, worker, workers_alive

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TORCH_SERVER = os.path.join(ROOT, "examples", "workers", "torch_server.py")
MiB = 1 << 20


def children_of(pid):
    """Pids whose parent is pid (zombies included)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append((int(d), fields[0]))
            except (OSError, IndexError, ValueError):
                pass
    return out


WEIGHTS = tempfile.mkdtemp(prefix="mb-weights-")
WEIGHT_FILE = os.path.join(WEIGHTS, "weights.bin")
with open(WEIGHT_FILE, "wb") as f:
    f.write(os.urandom(8 * MiB))

# Exits the first time as a worker whose port was taken between the daemon's
# check and its bind does, then runs the test worker.
FLAG = os.path.join(WEIGHTS, "port-race-once")
PORT_RACE = json.dumps(["/bin/sh", "-c",
                        f"if [ ! -e {FLAG} ]; then touch {FLAG}; "
                        "echo 'OSError: [Errno 98] Address already in use'; exit 1; fi; "
                        f"exec /usr/bin/python3 {os.path.join(HERE, 'workers', 'test_worker.py')} "
                        "--port \"$0\"", "${PORT}"])

CONFIG = f"""
devices: [{{host: true, budget: 2GiB}}]
host_memory: 256MiB
defaults: {{keep_alive: 5m, host_keep_alive: 5m, start_timeout: 20s}}
models:
  stubborn:
    cmd: {worker("--ignore-term")}
    stop_timeout: 300ms
  envcwd:
    cmd: {worker("--model", "${MODEL}-on-${PORT}-gpu${GPU}x")}
    env: {{MB_TEST_VAR: "value of ${{MODEL}} at ${{PORT}}", MB_DOLLAR: "a$$b"}}
    cwd: {WEIGHTS}
  slowstart:
    cmd: {worker("--never-healthy")}
    start_timeout: 700ms
  badhook:
    cmd: {worker()}
    hooks:
      offload: {{path: /no-such-hook, timeout: 5s}}
      restore: {{path: /restore}}
  busy:
    cmd: {worker()}
    busy_timeout: 500ms
  pinned:
    cmd: {worker()}
    files: [{WEIGHT_FILE}]
  fat:
    cmd: {worker("--alloc-mb", "64")}
  portrace:
    cmd: {PORT_RACE}
"""


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CONFIG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]
    # The daemon is gone; none of its workers may be left.
    assert children_of(daemon.proc.pid) == []


def load(d, name):
    code, st, _ = d.post(f"/api/models/{name}/load")
    assert code == 200 and st["state"] == "ready", (code, st)
    return st


def test_sigterm_ignored_escalates_to_sigkill_and_is_reaped(d):
    st = load(d, "stubborn")
    pid = st["pid"]
    assert workers_alive([pid]) == [pid]
    code, st, _ = d.post("/api/models/stubborn/unload")
    assert code == 200 and st["state"] == "unloaded" and st["pid"] is None
    # SIGKILLed and reaped: neither alive nor a zombie child of the daemon.
    assert workers_alive([pid]) == []
    assert pid not in [c for c, _ in children_of(d.proc.pid)]


def test_substitution_env_cwd_and_cuda_visible_devices(d):
    st = load(d, "envcwd")
    url = f"/m/envcwd"
    code, env, _ = d.get(url + "/env?name=MB_TEST_VAR")
    assert code == 200
    value = env["value"]
    assert value.startswith("value of envcwd at ")
    port = int(value.rsplit(" ", 1)[1])
    assert 0 < port < 65536
    # The worker really listens on the substituted port.
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert d.get(url + "/env?name=MB_DOLLAR")[1]["value"] == "a$b"
    # The host device: ${GPU} is empty and CUDA_VISIBLE_DEVICES is "".
    assert d.get(url + "/env?name=CUDA_VISIBLE_DEVICES")[1]["value"] == ""
    assert d.get(url + "/cwd")[1]["cwd"] == WEIGHTS
    with open(f"/proc/{st['pid']}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert f"envcwd-on-{port}-gpux".encode() in argv
    # Its own process group.
    assert os.getpgid(st["pid"]) == st["pid"]


def test_start_timeout_fails_the_load_and_kills_the_worker(d):
    before = {c for c, _ in children_of(d.proc.pid)}
    code, err, _ = d.post("/api/models/slowstart/load")
    assert code in (502, 504), (code, err)
    st = d.status("slowstart")
    assert st["state"] == "failed" and st["pid"] is None
    # The reason and the worker's last output ride along.
    assert "not healthy (GET /health) within 700 ms" in st["error"]
    assert "last output:" in st["error"] and "/health" in st["error"].split("last output:")[1]
    after = {c for c, _ in children_of(d.proc.pid)}
    assert after <= before  # nothing left of it, zombie or not


def test_port_taken_before_the_bind_gets_a_new_port(d):
    st = load(d, "portrace")
    assert os.path.exists(FLAG) and st["pid"] is not None
    # Without the retry this load fails with the worker's exit status 1.
    assert d.post("/m/portrace/infer", {})[0] == 200


def test_failing_hook_gives_a_clear_error(d):
    load(d, "badhook")
    code, err, _ = d.post("/api/models/badhook/offload")
    assert code >= 400
    msg = json.dumps(err)
    assert "404" in msg and "/no-such-hook" in msg, msg


def test_busy_timeout_kills_the_worker_and_answers_504(d):
    pid = load(d, "busy")["pid"]
    code, err, _ = d.get("/m/busy/slow?ms=20000", timeout=30)
    assert code == 504, (code, err)
    deadline = time.time() + 10 * SLOW
    while workers_alive([pid]) and time.time() < deadline:
        time.sleep(0.05)
    assert workers_alive([pid]) == []
    # The core learned it: a loss, counted, and the next request starts a
    # new process in a new, counted load.
    st = d.status("busy")
    assert st["stats"]["crashes"] == 1 and st["last_crash"]["reason"] == "busy_timeout", st
    code, body, _ = d.post("/m/busy/infer", {"x": 1})
    assert code == 200 and body["pid"] != pid
    assert d.status("busy")["stats"]["loads"] == 2


def test_host_tier_without_hooks_stops_and_pins_files(d):
    pid = load(d, "pinned")["pid"]
    code, st, _ = d.post("/api/models/pinned/offload")
    assert code == 200 and st["state"] == "offloaded", st
    assert st["pid"] is None and workers_alive([pid]) == []
    assert st["host_bytes"] >= 8 * MiB  # the files held in RAM
    code, st, _ = d.post("/api/models/pinned/load")
    assert code == 200 and st["state"] == "ready" and st["pid"] not in (None, pid)
    assert st["stats"]["restores"] >= 1


@pytest.mark.skipif(os.environ.get("MB_SANITIZE", "none") not in ("", "none"),
                    reason="a sanitized daemon's figures are not compared")
def test_rss_of_a_worker_holding_a_known_amount(d):
    small = load(d, "envcwd")["vram_bytes"]
    fat = load(d, "fat")["vram_bytes"]
    # 64 MiB of touched pages more than the same worker holding nothing.
    assert fat - small >= 60 * MiB, (fat, small)
    assert fat - small <= 80 * MiB, (fat, small)
    # rss_bytes (one model's status only) is measured now: memory the
    # worker takes while serving shows at once, vram_bytes at the next load.
    code, st = d.request("GET", "/api/models/fat")[:2]
    before = st["rss_bytes"]
    assert code == 200 and before >= 60 * MiB, st
    code, _ = d.request("POST", "/m/fat/alloc?mb=48")[:2]
    assert code == 200
    code, st = d.request("GET", "/api/models/fat")[:2]
    assert 44 * MiB <= st["rss_bytes"] - before <= 64 * MiB, (st["rss_bytes"], before)
    assert st["vram_bytes"] == fat
    code, doc = d.request("GET", "/api/models")[:2]
    assert all("rss_bytes" not in m for m in doc["models"])
    code, st = d.request("POST", "/api/models/fat/unload")[:2]
    assert code == 200 and st["rss_bytes"] is None, st


# --------------------------------------------------------------------------
# The example PyTorch worker.

def http(port, method, path, body=None, timeout=60):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None)
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    return r.status, doc


def test_torch_server_directly():
    port = free_port()
    p = subprocess.Popen(["/usr/bin/python3", TORCH_SERVER, "--port", str(port), "--dim", "128",
                          "--layers", "2", "--heads", "4", "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                code, h = http(port, "GET", "/health")
                break
            except OSError:
                assert p.poll() is None and time.time() < deadline
                time.sleep(0.1)
        assert code == 200 and h["location"] == "device" and h["parameters"] > 0
        code, e1 = http(port, "POST", "/v1/embeddings", {"input": ["hello", "other text"]})
        assert code == 200 and e1["object"] == "list" and len(e1["data"]) == 2
        v = e1["data"][0]["embedding"]
        assert len(v) == 128 and abs(sum(x * x for x in v) - 1.0) < 1e-3
        assert e1["data"][0]["embedding"] != e1["data"][1]["embedding"]
        assert e1["usage"]["prompt_tokens"] == len(b"hello") + len(b"other text")
        code, out = http(port, "POST", "/infer", {"input": "abc", "max_tokens": 5})
        assert code == 200 and out["tokens"] == 5
        assert http(port, "POST", "/offload")[1]["location"] == "host"
        assert http(port, "GET", "/health")[1]["location"] == "host"
        assert http(port, "POST", "/v1/embeddings", {"input": "x"})[0] == 503
        assert http(port, "POST", "/restore")[1]["location"] == "device"
        assert http(port, "POST", "/cleanup")[0] == 200
        code, e2 = http(port, "POST", "/v1/embeddings", {"input": ["hello"]})
        # The same weights came back: the same vector, to float precision.
        assert max(abs(a - b) for a, b in zip(e2["data"][0]["embedding"], v)) < 1e-5
        assert http(port, "POST", "/v1/embeddings", {"input": 3})[0] == 400
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def test_torch_server_through_the_daemon():
    args = ["/usr/bin/python3", TORCH_SERVER, "--port", "${PORT}", "--model", "${MODEL}",
            "--dim", "128", "--layers", "2", "--heads", "4", "--threads", "1"]
    cmd = "[" + ", ".join(json.dumps(x) for x in args) + "]"
    daemon = Daemon(f"""
devices: [{{host: true, budget: 2GiB}}]
models:
  tiny:
    cmd: {cmd}
    start_timeout: 2m
    hooks:
      offload: {{path: /offload}}
      restore: {{path: /restore}}
      cleanup: {{path: /cleanup}}
""")
    try:
        code, e, _ = daemon.post("/v1/embeddings", {"model": "tiny", "input": "hello"}, timeout=180)
        assert code == 200 and len(e["data"][0]["embedding"]) == 128, (code, e)
        code, st, _ = daemon.post("/api/models/tiny/offload")
        assert code == 200 and st["state"] == "offloaded"
        code, e2, _ = daemon.post("/v1/embeddings", {"model": "tiny", "input": "hello"})
        assert code == 200 and e2["data"][0]["embedding"] == e["data"][0]["embedding"]
        assert daemon.status("tiny")["stats"]["restores"] >= 1
    finally:
        assert daemon.stop() == 0, daemon.logs()[-3000:]
