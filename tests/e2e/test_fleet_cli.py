"""The modelbuf tool's fleet view over two real modelbufd (and an address
where nothing listens): ps, status and top with --url A,B and
MODELBUF_URLS, every node's models in one table under its node name, an
unreachable node as a line that says so, the exit codes, and addresses
the tool refuses."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import SLOW, Daemon, free_port, worker  # noqa: E402

BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
TOOL = os.path.join(BUILD, "cli", "modelbuf")
KEY = "fleet-cli-key"


def cfg(node, *models):
    text = (f"node: {node}\napi_keys: [{KEY}]\ndevices: [{{host: true, budget: 512MiB}}]\n"
            "defaults: {keep_alive: 10m}\nmodels:\n")
    for m in models:
        text += f"  {m}:\n    cmd: {worker()}\n"
    return text


@pytest.fixture(scope="module")
def fleet():
    a = Daemon(cfg("node-a", "alpha", "shared"))
    b = Daemon(cfg("node-b", "beta", "shared"))
    yield a, b
    assert a.stop() == 0 and b.stop() == 0


def run(*args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUF_")}
    e["MODELBUF_API_KEY"] = KEY
    e.update(env or {})
    return subprocess.run([TOOL, *args], capture_output=True, text=True, env=e,
                          timeout=timeout * SLOW)


def urls(*daemons):
    return ",".join(f"127.0.0.1:{d.port}" for d in daemons)


def rows(out):
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NODE", "NAME", "STATE"], out
    return [ln.split() for ln in lines[1:]]


def test_ps_shows_every_node(fleet):
    a, b = fleet
    assert a.post("/m/alpha/infer", {}, headers={"X-API-Key": KEY})[0] == 200
    p = run("ps", "--url", urls(a, b))
    assert p.returncode == 0, p.stderr
    got = {(r[0], r[1]): r[2] for r in rows(p.stdout)}
    assert all(len(ln) <= 80 for ln in p.stdout.splitlines()), p.stdout  # short names: 80
    head = p.stdout.splitlines()[0].split()
    assert head == ["NODE", "NAME", "STATE", "LOCATION", "DEVICE", "GPU", "HOST", "IN/QUEUE",
                    "UNTIL"], head  # the one-daemon table's columns after NODE
    assert got == {("node-a", "alpha"): "ready", ("node-a", "shared"): "unloaded",
                   ("node-b", "beta"): "unloaded", ("node-b", "shared"): "unloaded"}
    # The same from MODELBUF_URLS; --url wins over it.
    p = run("ps", env={"MODELBUF_URLS": urls(b, a)})
    assert p.returncode == 0 and [r[0] for r in rows(p.stdout)] == ["node-b"] * 2 + ["node-a"] * 2
    p = run("ps", "--url", f"127.0.0.1:{a.port}", env={"MODELBUF_URLS": urls(b, a)})
    assert p.returncode == 0 and p.stdout.split()[0] == "NAME"  # one daemon: the usual table
    # JSON: each node with its models.
    p = run("ps", "--json", "--url", urls(a, b))
    doc = json.loads(p.stdout)
    assert [(n["node"], n["reachable"], [m["name"] for m in n["models"]]) for n in doc["nodes"]] \
        == [("node-a", True, ["alpha", "shared"]), ("node-b", True, ["beta", "shared"])]


def test_an_unreachable_node_is_a_line_not_a_crash(fleet):
    a, b = fleet
    dead = f"127.0.0.1:{free_port()}"
    p = run("ps", "--url", f"{urls(a)},{dead},{urls(b)}")
    assert p.returncode == 3, (p.stdout, p.stderr)  # one could not be reached
    lines = p.stdout.splitlines()
    assert any(ln.startswith(f"http://{dead}") and "(unreachable: " in ln for ln in lines), lines
    assert {r[0] for r in rows(p.stdout)} >= {"node-a", "node-b"}
    p = run("ps", "--json", "--url", f"{dead},{urls(a)}")
    doc = json.loads(p.stdout)
    assert p.returncode == 3 and doc["nodes"][0]["reachable"] is False
    assert doc["nodes"][0]["error"] and doc["nodes"][1]["node"] == "node-a"
    # A node that answers an error (a wrong key) is a line too: exit 1.
    p = run("ps", "--url", urls(a, b), "--api-key", "wrong")
    assert p.returncode == 1 and p.stdout.count("(error: unauthorized (HTTP 401)") == 2, p.stdout
    assert [r[0] for r in rows(p.stdout)] == ["node-a", "node-b"]  # named by their header


def test_status_on_every_node(fleet):
    a, b = fleet
    assert b.post("/m/shared/infer", {}, headers={"X-API-Key": KEY})[0] == 200
    p = run("status", "shared", "--url", urls(a, b))
    assert p.returncode == 0, p.stderr
    assert {r[0]: r[2] for r in rows(p.stdout)} == {"node-a": "unloaded", "node-b": "ready"}
    p = run("status", "alpha", "--url", urls(a, b))  # only node-a has it
    assert p.returncode == 1
    assert "node-b" in p.stdout and "(error: not_found (HTTP 404)" in p.stdout
    p = run("status", "shared", "--json", "--url", urls(a, b))
    doc = json.loads(p.stdout)
    assert doc["name"] == "shared"
    assert [n["model"]["state"] for n in doc["nodes"]] == ["unloaded", "ready"]


def test_top_follows_every_node(fleet):
    a, b = fleet
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUF_")}
    e.update(MODELBUF_API_KEY=KEY, MODELBUF_URLS=urls(a, b))
    p = subprocess.Popen([TOOL, "top"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=e)
    try:
        # Not a terminal: the table once, then one line per change.
        first = p.stdout.readline()
        assert first.split()[:2] == ["NODE", "NAME"], first
        table = [p.stdout.readline() for _ in range(4)]
        assert {ln.split()[0] for ln in table} == {"node-a", "node-b"}
        assert b.post("/api/models/beta/load", {}, headers={"X-API-Key": KEY})[0] == 200
        deadline = time.time() + 30 * SLOW
        while time.time() < deadline:
            line = p.stdout.readline()
            if line.split()[1:] == ["node-b", "beta", "unloaded", "->", "ready"]:
                break
        else:
            raise AssertionError("no change line for beta")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


@pytest.mark.parametrize("bad", ["127.0.0.1:1,", ",127.0.0.1:1", "a b", "ftp://x",
                                 "http://x\x1b[2J", "x" * 401, "unix:",
                                 ",".join(["127.0.0.1:1"] * 129)])
def test_bad_addresses_are_refused(bad):
    for cmd in (["ps"], ["status", "x"], ["top"]):
        p = run(*cmd, "--url", bad, timeout=10)
        assert p.returncode == 2 and "modelbuf: --url:" in p.stderr, (cmd, bad, p.stderr)
    p = run("ps", env={"MODELBUF_URLS": bad}, timeout=10)
    assert p.returncode == 2 and "MODELBUF_URLS" in p.stderr


def test_single_daemon_commands_refuse_a_list(fleet):
    a, b = fleet
    p = run("load", "alpha", "--url", urls(a, b))
    assert p.returncode == 2 and "talks to one daemon" in p.stderr
