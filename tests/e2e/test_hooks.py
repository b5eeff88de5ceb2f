"""modelbufd end to end: per-model hooks and start-up. `cleanup:
after_request` (the worker's cleanup hook after each proxied request, off
the client's critical path, before the next request is sent to it), the
`unload` hook (before the worker is stopped, bounded by its timeout, on
every kind of stop), and `preload: true` (loaded at start and after a
reload, highest priority first, within the budget). Real daemon, real
workers."""
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import SLOW, Daemon, worker  # noqa: E402


def wait_for(pred, timeout=20, what="condition"):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(what + " not met in time")


def lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_cleanup_after_each_request_before_the_next():
    tmp = tempfile.mkdtemp(prefix="mb-hooks-")
    rec, gate = os.path.join(tmp, "record"), os.path.join(tmp, "gate")
    d = Daemon(f"""devices: [{{host: true}}]
models:
  c:
    cmd: {worker("--record", rec, "--cleanup-gate", gate)}
    max_concurrency: 1
    cleanup: after_request
    hooks: {{cleanup: {{path: /cleanup, timeout: 2m}}}}
""")
    try:
        # The client has its answer while the cleanup still runs (the gate
        # is shut: the worker's cleanup waits for it).
        code, body, _ = d.post("/m/c/infer", {"n": 1})
        assert code == 200 and body["echo"] == {"n": 1}
        wait_for(lambda: "/cleanup" in lines(rec), what="the cleanup hook was called")
        assert lines(rec) == ["/infer", "/cleanup"]
        # The next request waits for the slot the cleanup still holds: it is
        # queued, and the worker has not seen it.
        out = {}
        t = threading.Thread(target=lambda: out.update(r=d.post("/m/c/infer", {"n": 2})))
        t.start()
        d.wait_until("c", lambda s: s["queued"] == 1)
        assert lines(rec) == ["/infer", "/cleanup"]
        # The cleanup ends: then the second request goes to the worker.
        open(gate, "w").close()
        t.join(30 * SLOW)
        assert out["r"][0] == 200 and out["r"][1]["echo"] == {"n": 2}
        wait_for(lambda: lines(rec).count("/cleanup-done") == 2, what="the second cleanup")
        assert lines(rec) == ["/infer", "/cleanup", "/cleanup-done", "/infer", "/cleanup",
                              "/cleanup-done"]
        st = d.wait_until("c", lambda s: s["inflight"] == 0)
        assert st["stats"]["requests"] == 2
        # Management routes are not proxied requests: no cleanup for them.
        assert d.get("/api/models/c")[0] == 200
        assert lines(rec).count("/cleanup") == 2
    finally:
        assert d.stop() == 0


def test_a_failing_cleanup_hook_is_logged_and_frees_the_slot():
    tmp = tempfile.mkdtemp(prefix="mb-hooks-")
    rec = os.path.join(tmp, "record")
    d = Daemon(f"""devices: [{{host: true}}]
models:
  c:
    cmd: {worker("--record", rec)}
    cleanup: after_request
    hooks: {{cleanup: {{path: /no-such-hook}}}}
""")
    try:
        for i in range(3):
            code, body, _ = d.post("/m/c/infer", {"i": i})
            assert code == 200 and body["echo"] == {"i": i}
        wait_for(lambda: lines(rec).count("/no-such-hook") == 3, what="three cleanups")
        d.wait_until("c", lambda s: s["inflight"] == 0)
        wait_for(lambda: "cleanup after a request failed" in d.logs(), what="the log line")
    finally:
        assert d.stop() == 0


def test_unload_hook_on_idle_expiry_and_bounded_by_its_timeout():
    tmp = tempfile.mkdtemp(prefix="mb-hooks-")
    mark = os.path.join(tmp, "mark")
    d = Daemon(f"""devices: [{{host: true}}]
models:
  idle:
    cmd: {worker("--unload-mark", mark)}
    keep_alive: 0
    offload: false
    hooks: {{unload: {{path: /unload-hook}}}}
  stuck:
    cmd: {worker()}
    stop_timeout: 1s
    hooks: {{unload: {{method: GET, path: "/slow?ms=60000", timeout: 1s}}}}
""")
    try:
        # Idle expiry (keep_alive 0) stops the worker: its hook runs first.
        code, body, _ = d.post("/m/idle/infer", {})
        assert code == 200
        d.wait_state("idle", ["unloaded"])
        with open(mark) as f:
            assert int(f.read()) == body["pid"]
        # A hook that hangs is given up after its timeout: the stop goes on.
        assert d.post("/m/stuck/infer", {})[0] == 200
        t0 = time.time()
        code, st, _ = d.post("/api/models/stuck/unload", timeout=60)
        took = time.time() - t0
        assert code == 200 and st["state"] == "unloaded"
        assert took < 20 * SLOW, took  # the hook's 1 s and the stop, far from its 60 s
        code, log, _ = d.get("/api/models/stuck/logs")
        assert "unload hook" in log, log
    finally:
        assert d.stop() == 0


def loaded_at(d, name):
    return d.status(name)["loaded_at"]


def test_preload_at_start_by_priority_within_the_budget_and_after_reload():
    low = worker("--alloc-mb", "8")
    d = Daemon(f"""devices: [{{host: true, budget: 200MiB}}]
defaults: {{keep_alive: 10m}}
models:
  low:
    cmd: {low}
    vram: 16MiB
    preload: true
    priority: 1
  high:
    cmd: {worker("--alloc-mb", "8")}
    vram: 16MiB
    preload: true
    priority: 5
  huge:
    cmd: {worker()}
    vram: 1GiB
    preload: true
    priority: 3
  lazy:
    cmd: {worker()}
""")
    try:
        # Both load without a request, the higher priority first; the one
        # that cannot fit is skipped, and the one without preload waits.
        d.wait_state("low", ["ready"], timeout=30)
        high = d.wait_state("high", ["ready"], timeout=30)
        assert high["loaded_at"] < loaded_at(d, "low")
        assert high["stats"]["requests"] == 0 and high["stats"]["loads"] == 1
        assert d.status("lazy")["state"] == "unloaded"
        assert d.status("huge")["state"] == "unloaded"
        logs = d.logs()
        assert "preload skipped: it does not fit without evicting" in logs and "model=huge" in logs
        assert logs.index("model=high") < logs.index('msg="preload" model=low')
        # A reload that adds a preloaded model loads it; the others stay.
        with open(d.cfg) as f:
            cfg = f.read()
        with open(d.cfg, "w") as f:
            f.write(cfg + f"""  added:
    cmd: {worker()}
    preload: true
""")
        low_pid = d.status("low")["pid"]
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.get("/api/models/added")[0] == 200, what="the reload")
        d.wait_state("added", ["ready"], timeout=30)
        assert d.status("low")["pid"] == low_pid and d.status("low")["stats"]["loads"] == 1
        assert d.status("lazy")["state"] == "unloaded"
    finally:
        assert d.stop() == 0
