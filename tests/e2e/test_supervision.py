"""Workers supervised through the core (docs/WORKERS.md): the real daemon
with real worker processes that crash, hang, escape with setsid, outgrow
their declaration, start slowly, and a daemon killed with SIGKILL.

Every wait is a bounded poll; bounds are generous (and longer under a
sanitizer)."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from test_daemon import BUILD, SLOW, Daemon, worker, workers_alive

CLI = os.path.join(BUILD, "cli", "modelbuf")
MiB = 1 << 20


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def children_of(pid):
    """(pid, state) of the processes whose parent is pid."""
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


def events(d, model, timeout=1.0):
    """Every event of the daemon's ring so far for model (replayed from the
    start with Last-Event-ID: 0), read until the stream is quiet."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=timeout * SLOW)
    s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    s.close()
    out = []
    for m in re.finditer(rb"data: (\{.*?\})\r?\n", data):
        ev = json.loads(m.group(1))
        if ev.get("model") == model:
            out.append(ev)
    return out


def log_lines(d, needle):
    return [l for l in d.logs().splitlines() if needle in l]


MARK = os.path.join(tempfile.mkdtemp(prefix="mb-supervision-"), "unload-hook-called")

CONFIG = f"""
devices: [{{host: true, budget: 2GiB}}]
defaults: {{keep_alive: 5m, start_timeout: 20s}}
models:
  crashy:
    cmd: {worker()}
  idle:
    cmd: {worker()}
  loop:
    cmd: {worker()}
    crash_limit: 3
    crash_window: 5m
  hung:
    cmd: {worker()}
    health_interval: 200ms
    health_failures: 2
  escaper:
    cmd: {worker("--child", "302", "--setsid-child", "302", "--ignore-term")}
    stop_timeout: 300ms
  slowload:
    cmd: {worker("--slow-start", "30000")}
    start_timeout: 60s
  slowok:
    cmd: {worker("--slow-start", "1500")}
    queue_timeout: 400ms
  tooslow:
    cmd: {worker("--slow-start", "5000")}
    start_timeout: 700ms
    queue_timeout: 60s
  slot:
    cmd: {worker()}
    queue_timeout: 300ms
  fat:
    cmd: {worker("--alloc-mb", "64")}
    vram: 20MiB
  limited:
    cmd: {worker("--alloc-mb", "8")}
    memory_limit: 96MiB
  hooked:
    cmd: {worker("--unload-mark", MARK)}
    hooks: {{unload: {{path: /unload-hook}}}}
"""


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CONFIG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]
    assert [c for c in children_of(daemon.proc.pid) if c[1] != "Z"] == []


def load(d, name):
    code, st, _ = d.post(f"/api/models/{name}/load", timeout=60)
    assert code == 200 and st["state"] == "ready", (code, st)
    return st


# --------------------------------------------------------------------------
# Losses


def test_crash_mid_request_then_one_counted_load(d):
    st = load(d, "crashy")
    pid = st["pid"]
    assert st["stats"]["loads"] == 1
    code, err, _ = d.post("/m/crashy/crash", {})
    assert code == 502, (code, err)
    # The next request is served by a new, counted, admitted load.
    code, body, hdrs = d.post("/m/crashy/infer", {"x": 1})
    assert code == 200, (code, body)
    assert body["pid"] != pid
    assert float(hdrs["X-Modelbuf-Load-Ms"]) > 0
    st = d.status("crashy")
    assert st["state"] == "ready" and st["pid"] == body["pid"]
    assert st["stats"]["loads"] == 2 and st["stats"]["crashes"] == 1
    assert st["last_crash"]["reason"] == "exited: status 3"
    # One log line and one event, with the worker's last output.
    lost = log_lines(d, 'msg="model lost" model=crashy')
    assert len(lost) == 1, lost
    assert 'reason="exited: status 3"' in lost[0] and "crashing (test fault)" in lost[0]
    evs = [e for e in events(d, "crashy") if e["type"] == "lost"]
    assert len(evs) == 1 and evs[0]["reason"] == "exited: status 3", evs
    assert "crashing (test fault)" in evs[0]["last_output"]
    # Reaped: no zombie of the old worker under the daemon.
    assert pid not in [c for c, _ in children_of(d.proc.pid)]
    # The metric counts it.
    code, text, _ = d.get("/metrics")
    assert re.search(r'^modelbuf_crashes_total\{model="crashy",node="[^"]*"\} 1$', text, re.M), text


def test_kill9_of_an_idle_worker_is_seen_without_a_request(d):
    pid = load(d, "idle")["pid"]
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    st = wait_for(lambda: (lambda s: s if s["state"] != "ready" else None)(d.status("idle")), 1.0,
                  "idle to leave ready")
    assert time.time() - t0 < 1.0 * SLOW
    st = d.wait_state("idle", ["unloaded"])
    assert st["stats"]["crashes"] == 1 and st["pid"] is None
    assert st["last_crash"]["reason"] == "killed: SIGKILL"
    wait_for(lambda: pid not in [c for c, _ in children_of(d.proc.pid)], 5, "the reap")


def test_crash_loop_reaches_failed_with_backoff(d):
    for i in range(3):
        code, err, _ = d.post("/m/loop/crash", {}, timeout=60)
        assert code == 502, (i, code, err)
        d.wait_state("loop", ["unloaded", "failed"])
    st = d.status("loop")
    assert st["state"] == "failed", st
    assert st["stats"]["crashes"] == 3 and st["stats"]["loads"] == 3
    assert "lost 3 times within 300 s" in st["error"] and "exited: status 3" in st["error"]
    # Within the back-off: refused at once, no new worker.
    code, err, _ = d.post("/m/loop/infer", {})
    assert code == 502 and "next retry" in err["error"]["message"], err
    assert d.status("loop")["pid"] is None
    # After it (1 s for the first failure): loaded again.
    def served():
        code, body, _ = d.post("/m/loop/infer", {})
        return code == 200
    wait_for(served, 10, "a load after the back-off")
    assert d.status("loop")["stats"]["loads"] == 4


def test_hung_worker_caught_by_the_health_check(d):
    pid = load(d, "hung")["pid"]
    code, _, _ = d.post("/m/hung/hang", {})
    assert code == 200
    st = wait_for(lambda: (lambda s: s if s["last_crash"] else None)(d.status("hung")), 20,
                  "the health checks to report it")
    assert st["last_crash"]["reason"].startswith("unhealthy: 2 failed health checks in a row")
    st = d.wait_state("hung", ["unloaded"], timeout=20)
    assert st["stats"]["crashes"] == 1
    wait_for(lambda: workers_alive([pid]) == [], 10, "the hung worker to be stopped")


def test_unload_hook_runs_before_the_stop(d):
    pid = load(d, "hooked")["pid"]
    assert not os.path.exists(MARK)
    code, st, _ = d.post("/api/models/hooked/unload")
    assert code == 200 and st["state"] == "unloaded"
    with open(MARK) as f:
        assert f.read() == str(pid)  # the worker itself answered it, still running
    os.unlink(MARK)
    # A lost worker has no one to answer it: the unload after a loss skips it.
    pid = load(d, "hooked")["pid"]
    os.kill(pid, signal.SIGKILL)
    d.wait_state("hooked", ["unloaded"])
    assert not os.path.exists(MARK)


# --------------------------------------------------------------------------
# Escapes


def escaper_pids(d):
    st = load(d, "escaper")
    code, ch, _ = d.get("/m/escaper/children")
    assert code == 200 and len(ch["pids"]) == 2
    child, escaped = ch["pids"]
    assert os.getsid(escaped) == escaped != ch["sid"]  # really out of the worker's session
    assert workers_alive([st["pid"], child, escaped]) == [st["pid"], child, escaped]
    return [st["pid"], child, escaped]


def test_setsid_grandchild_stopped_on_unload_without_hang(d):
    pids = escaper_pids(d)
    t0 = time.time()
    code, st, _ = d.post("/api/models/escaper/unload", timeout=30)
    took = time.time() - t0
    assert code == 200 and st["state"] == "unloaded", (code, st)
    assert took < 10 * SLOW  # stop_timeout is 300 ms: no wait on the grandchild's pipe
    wait_for(lambda: workers_alive(pids) == [], 5, "every process of the worker to go")
    # Reaped by the daemon (a subreaper): no zombie of them under it.
    wait_for(lambda: not set(pids) & {c for c, _ in children_of(d.proc.pid)}, 5, "the reaps")


def test_setsid_grandchild_stopped_on_shutdown():
    daemon = Daemon(f"""
devices: [{{host: true, budget: 1GiB}}]
models:
  escaper:
    cmd: {worker("--child", "302", "--setsid-child", "302", "--ignore-term")}
    stop_timeout: 300ms
""")
    try:
        pids = escaper_pids(daemon)
        t0 = time.time()
        assert daemon.stop() == 0, daemon.logs()[-3000:]
        assert time.time() - t0 < 15 * SLOW
        wait_for(lambda: workers_alive(pids) == [], 5, "every process of the worker to go")
    finally:
        for p in workers_alive(locals().get("pids", [])):
            os.kill(p, signal.SIGKILL)


def test_kill9_of_the_daemon_then_a_new_start_leaves_nothing_behind():
    config = f"""
devices: [{{host: true, budget: 1GiB}}]
models:
  stubborn:
    cmd: {worker("--ignore-term", "--child", "302", "--setsid-child", "302")}
  plain:
    cmd: {worker()}
"""
    first = Daemon(config)
    pids = []
    try:
        pids = escaper_like(first, "stubborn") + [load(first, "plain")["pid"]]
        first.proc.kill()  # SIGKILL: no cleanup of its own
        first.proc.wait()
        first.stop()
        # The workers die with it (PDEATHSIG = SIGKILL); what they started
        # does not: that is what the next start must stop.
        wait_for(lambda: pids[0] not in workers_alive([pids[0]]), 5, "PDEATHSIG")
        left = workers_alive(pids)
        assert left, "the test needs processes the first daemon left behind"
        second = Daemon(config, port=first.port)  # the same address: the same state file
        try:
            wait_for(lambda: workers_alive(pids) == [], 5, "the leftovers to be stopped")
            assert log_lines(second, "stopped what the previous daemon left"), second.logs()
        finally:
            assert second.stop() == 0
    finally:
        for p in workers_alive(pids):
            os.kill(p, signal.SIGKILL)


def escaper_like(d, name):
    st = load(d, name)
    code, ch, _ = d.get(f"/m/{name}/children")
    assert code == 200 and len(ch["pids"]) == 2
    return [st["pid"]] + ch["pids"]


# --------------------------------------------------------------------------
# Loads: cancel, start_timeout, queue_timeout


def test_unload_during_a_load_cancels_it(d):
    result = {}

    def request():
        result["r"] = d.post("/m/slowload/infer", {}, timeout=120)

    t = threading.Thread(target=request)
    t.start()
    st = wait_for(lambda: (lambda s: s if s["state"] == "loading" and s["pid"] else None)(
        d.status("slowload")), 20, "the load to start")
    pid = st["pid"]
    t0 = time.time()
    code, st, _ = d.post("/api/models/slowload/unload", timeout=60)
    assert code == 200 and st["state"] == "unloaded", (code, st)
    assert time.time() - t0 < 5 * SLOW  # not the 30 s start, nor the 60 s start_timeout
    t.join(30)
    code, err, _ = result["r"]
    assert code == 499 and err["error"]["code"] == "canceled", (code, err)
    assert "canceled" in err["error"]["message"] and "unloaded" in err["error"]["message"]
    wait_for(lambda: workers_alive([pid]) == [], 5, "the starting worker to be killed")
    st = d.status("slowload")
    assert st["error"] is None and st["stats"]["load_failures"] == 0


def test_slow_load_answered_under_start_timeout(d):
    # A 1.5 s start, a 400 ms queue_timeout: the load is not queue time.
    code, body, hdrs = d.post("/m/slowok/infer", {}, timeout=60)
    assert code == 200, (code, body)
    assert float(hdrs["X-Modelbuf-Load-Ms"]) >= 1400
    # A start past start_timeout: 504 naming the limit.
    code, err, _ = d.post("/m/tooslow/infer", {}, timeout=60)
    assert code == 504, (code, err)
    assert "(start_timeout)" in err["error"]["message"], err


def test_queue_timeout_names_its_setting(d):
    load(d, "slot")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", d.get("/m/slot/slow?ms=3000")))
    t.start()
    wait_for(lambda: d.status("slot")["inflight"] == 1, 10, "the slot to be taken")
    code, err, _ = d.post("/m/slot/infer", {})
    assert code == 504 and "(queue_timeout)" in err["error"]["message"], (code, err)
    code, err, _ = d.post("/m/slot/infer", {}, headers={"X-Modelbuf-Queue-Timeout": "100ms"})
    assert code == 504 and "(the request's queue timeout)" in err["error"]["message"], err
    t.join(30)
    assert result["r"][0] == 200


# --------------------------------------------------------------------------
# Memory


def test_footprint_overrun_is_a_warning(d):
    st = load(d, "fat")
    assert st["declared_bytes"] == 20 * MiB
    assert "footprint_overrun" in st["warnings"], st
    assert st["measured_bytes"] > 22 * MiB
    evs = [e for e in events(d, "fat") if e.get("warning") == "footprint_overrun"]
    assert len(evs) == 1 and "over the declared 20.0 MiB" in evs[0]["reason"], evs
    code, text, _ = d.get("/metrics")
    assert re.search(r'^modelbuf_footprint_overrun\{model="fat",node="[^"]*"\} 1$', text, re.M), text
    assert log_lines(d, "warning=footprint_overrun")


def test_memory_limit_stops_the_worker_and_fails_the_model(d):
    st = load(d, "limited")
    pid = st["pid"]
    assert "footprint_overrun" not in st["warnings"]
    code, _, _ = d.post("/m/limited/alloc?mb=160", {}, timeout=60)
    assert code in (200, 502)  # it may be stopped before it answers
    st = d.wait_state("limited", ["failed"], timeout=20)
    assert st["error"].startswith("memory_limit: ") and "over the limit of 96.0 MiB" in st["error"]
    assert st["stats"]["crashes"] == 1
    wait_for(lambda: workers_alive([pid]) == [], 5, "the worker to be stopped")
    code, err, _ = d.post("/m/limited/infer", {})
    assert code == 502 and "memory_limit" in err["error"]["message"]


# --------------------------------------------------------------------------
# Logs


def sse_lines(port, path, headers=None, want=1, timeout=10):
    """(id, event, data) of the first `want` events of a follow stream."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\n"
    for k, v in (headers or {}).items():
        req += f"{k}: {v}\r\n"
    s.sendall((req + "\r\n").encode())
    buf, out = b"", []
    deadline = time.time() + timeout * SLOW
    while len(out) < want and time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        out = [(int(m.group(2)), m.group(1), m.group(3).decode())
               for m in re.finditer(rb"(?:event: (\w+)\n)?id: (\d+)\ndata: ([^\n]*)\n\n", buf)]
    s.close()
    return out


def test_logs_follow_resumes_after_last_event_id(d):
    load(d, "crashy")
    for i in range(3):
        assert d.post(f"/m/crashy/infer?resume={i}", {})[0] == 200
    first = sse_lines(d.port, "/api/models/crashy/logs?follow=1&tail=3", want=3)
    assert len(first) == 3
    ids = [i for i, _, _ in first]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert "resume=2" in first[-1][2]
    assert d.post("/m/crashy/infer?resume=3", {})[0] == 200
    nxt = sse_lines(d.port, "/api/models/crashy/logs?follow=1",
                    headers={"Last-Event-ID": str(ids[-1])}, want=1)
    assert nxt[0][0] == ids[-1] + 1 and "resume=3" in nxt[0][2], nxt
    code, err, _ = d.get("/api/models/crashy/logs?follow=1&since=x")
    assert code == 400


def test_logs_f_across_a_restart_each_line_once(d):
    load(d, "crashy")
    assert d.post("/m/crashy/infer?mark=start", {})[0] == 200
    cli = subprocess.Popen([CLI, "logs", "crashy", "-f", "-n", "1", "--url",
                            f"http://127.0.0.1:{d.port}"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(cli.stdout.readline, "")) or None)
    reader.start()

    def printed(key):
        return any(key in l for l in lines)

    try:
        wait_for(lambda: printed("mark=start"), 10, "the stream to open with the last line")
        for i in range(3):
            assert d.post(f"/m/crashy/infer?before={i}", {})[0] == 200
        assert d.post("/m/crashy/crash", {})[0] == 502
        for i in range(3):
            assert d.post(f"/m/crashy/infer?after={i}", {}, timeout=60)[0] == 200
        wait_for(lambda: printed("after=2 "), 10, "the last line to be printed")
    finally:
        cli.terminate()
        cli.wait(10)
        reader.join(10)
    lines = [l.rstrip("\n") for l in lines]
    for key in [f"before={i} " for i in range(3)] + [f"after={i} " for i in range(3)]:
        assert len([l for l in lines if key in l]) == 1, (key, lines)
    assert len([l for l in lines if "crashing (test fault)" in l]) == 1, lines
    restarts = [l for l in lines if l.startswith("--- restart: modelbufd: starting crashy")]
    assert len(restarts) == 1, lines
    order = [next(i for i, l in enumerate(lines) if k in l)
             for k in ("before=2 ", "crashing (test fault)", "--- restart:", "after=0 ")]
    assert order == sorted(order), lines
    # Exactly the daemon's log from the first line printed on, in its order.
    code, text, _ = d.get("/api/models/crashy/logs?tail=1000")
    log = [l[3:-3] if l.startswith("-- ") else l for l in text.splitlines()]
    start = max(i for i, l in enumerate(log) if "mark=start" in l)
    want = log[start:start + len(lines)]
    got = [l[len("--- restart: "):-len(" ---")] if l.startswith("--- restart: ") else l
           for l in lines]
    assert got == want, (got, want)


# --------------------------------------------------------------------------
# cgroups, where this machine lets the test make a cgroup v2 folder


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split(" - ")
            if len(parts) == 2 and parts[1].startswith("cgroup2 "):
                fields = parts[0].split()
                if fields[3] == "/":
                    return fields[4]
    return None


def test_worker_cgroup_killed_as_a_whole():
    root = cgroup2_root()
    if root is None or not os.access(root, os.W_OK):
        pytest.skip("no writable cgroup v2 hierarchy here")
    base = os.path.join(root, f"mbtest-{os.getpid()}-{int(time.time())}")
    try:
        os.mkdir(base)
    except OSError as e:
        pytest.skip(f"cannot make a cgroup here: {e}")
    daemon = None
    try:
        daemon = Daemon(f"""
cgroup: {base}
devices: [{{host: true, budget: 1GiB}}]
models:
  escaper:
    cmd: {worker("--child", "302", "--setsid-child", "302", "--ignore-term")}
    stop_timeout: 300ms
""")
        pids = escaper_pids(daemon)
        with open(f"/proc/{pids[0]}/cgroup") as f:
            cg = [l.split("::", 1)[1].strip() for l in f if l.startswith("0::")][0]
        assert cg.startswith(base[len(root):] + "/mbd-") and cg.endswith("-escaper"), cg
        for p in pids[1:]:  # the escaped one too
            with open(f"/proc/{p}/cgroup") as f:
                assert any(l.strip() == "0::" + cg for l in f)
        folder = root + cg
        procs = open(os.path.join(folder, "cgroup.procs")).read().split()
        assert set(map(int, procs)) >= set(pids)
        code, st, _ = daemon.post("/api/models/escaper/unload", timeout=30)
        assert code == 200 and st["state"] == "unloaded"
        wait_for(lambda: workers_alive(pids) == [], 5, "the cgroup's processes to go")
        wait_for(lambda: not os.path.exists(folder), 5, "the cgroup to be removed")
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        for sub in os.listdir(base) if os.path.isdir(base) else []:
            if os.path.isdir(os.path.join(base, sub)):
                os.rmdir(os.path.join(base, sub))
        if os.path.isdir(base):
            os.rmdir(base)
