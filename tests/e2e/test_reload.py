"""modelbufd end to end: SIGHUP reloads the configuration. Models added,
removed and changed are applied without touching the others (an unchanged
model keeps its worker process); an invalid file is refused with its
errors logged and the running configuration kept; a model in use is kept
as it was. The real daemon and the stdlib test worker."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import SLOW, Daemon, worker, workers_alive  # noqa: E402


def model(name, extra=""):
    return f"  {name}:\n    cmd: {worker()}\n    vram: 32MiB\n" + extra


def write(d, models):
    with open(d.cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:{d.port}\nmodels:\n" + models)


def names(d):
    return [m["name"] for m in d.get("/api/models")[1]["models"]]


def wait_log(d, text, timeout=15):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if text in d.logs():
            return
        time.sleep(0.05)
    raise AssertionError("not in the log: " + text + "\n" + d.logs())


def hup(d, marker_count):
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 15 * SLOW
    while time.time() < deadline:
        if d.logs().count('msg="reloaded"') + d.logs().count("reload refused") >= marker_count:
            return
        time.sleep(0.05)
    raise AssertionError("no reload in the log:\n" + d.logs())


def test_sighup_adds_removes_changes_and_keeps_the_rest():
    d = Daemon("models:\n" + model("alpha") + model("beta") + model("gamma"))
    try:
        st, alpha, _ = d.post("/api/models/alpha/load")
        assert st == 200 and alpha["state"] == "ready"
        st, gamma, _ = d.post("/api/models/gamma/load")
        assert st == 200
        # beta removed, gamma changed (keep_alive), delta added, alpha as it was.
        write(d, model("alpha") + model("gamma", "    keep_alive: 10m\n") + model("delta"))
        hup(d, 1)
        assert names(d) == ["alpha", "gamma", "delta"]
        a = d.status("alpha")
        assert a["state"] == "ready" and a["pid"] == alpha["pid"]
        assert workers_alive([alpha["pid"]]) == [alpha["pid"]]
        g = d.status("gamma")
        assert g["keep_alive_s"] == 600 and g["state"] == "unloaded"
        assert workers_alive([gamma["pid"]]) == []
        assert d.get("/api/models/beta")[0] == 404
        st, body, _ = d.post("/m/delta/infer", {"x": 1})
        assert st == 200 and body["model"] == "delta"
        st, body, _ = d.post("/m/alpha/infer", {"x": 2})
        assert st == 200 and body["pid"] == alpha["pid"]
        assert "added=1 removed=1 changed=1" in d.logs()
    finally:
        assert d.stop() == 0


def test_sighup_with_an_invalid_file_keeps_the_running_configuration():
    d = Daemon("models:\n" + model("alpha"))
    try:
        with open(d.cfg, "w") as f:
            f.write(f"listen: 127.0.0.1:{d.port}\nmodels:\n  alpha:\n    cmdd: [x]\n")
        hup(d, 1)
        wait_log(d, "reload refused")
        assert "cmdd" in d.logs()
        assert names(d) == ["alpha"]
        st, body, _ = d.post("/m/alpha/infer", {"x": 1})
        assert st == 200 and body["model"] == "alpha"
    finally:
        assert d.stop() == 0


def test_sighup_keeps_a_model_in_use():
    d = Daemon("models:\n" + model("alpha") + model("beta"))
    try:
        st, lease, _ = d.post("/api/models/alpha/acquire", {})
        assert st == 200
        write(d, model("beta"))
        hup(d, 1)
        wait_log(d, "reload: model kept as it was")
        assert "alpha" in names(d) and d.status("alpha")["inflight"] == 1
        assert d.request("DELETE", "/api/leases/" + str(lease["lease"]))[0] == 200
        # The next reload removes it once it is free.
        hup(d, 2)
        assert names(d) == ["beta"]
    finally:
        assert d.stop() == 0
