"""The modelbuf tool as a client of a real modelbufd with real workers:
ps, status, load with progress, offload, unload, keep-alive, logs, top,
and its messages and exit codes when something is wrong."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import Daemon, worker, SLOW  # noqa: E402

BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
TOOL = os.path.join(BUILD, "cli", "modelbuf")


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
defaults: {{keep_alive: 10m}}
models:
  alpha:
    cmd: {worker("--alloc-mb", "24", "--slow-start", "300")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
  beta:
    cmd: {worker()}
""")
    yield daemon
    assert daemon.stop() == 0


def run(d, *args, timeout=60):
    env = dict(os.environ, MODELBUF_URL=f"127.0.0.1:{d.port}")
    return subprocess.run([TOOL, *args], capture_output=True, text=True, env=env,
                          timeout=timeout * SLOW)


def test_ps_and_status(d):
    p = run(d, "ps")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "LOCATION", "DEVICE"]
    rows = {l.split()[0]: l.split() for l in lines[1:]}
    assert rows["alpha"][1] == "unloaded" and rows["beta"][1] == "unloaded"
    p = run(d, "ps", "--json")
    assert [m["name"] for m in json.loads(p.stdout)["models"]] == ["alpha", "beta"]
    p = run(d, "status", "beta", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "unloaded"


def test_load_offload_keep_alive_unload(d):
    p = run(d, "load", "alpha", "--keep-alive", "5m")
    assert p.returncode == 0, p.stderr
    # Not a TTY: progress lines, then the result.
    assert p.stdout.strip().splitlines()[-1].startswith("alpha ready in ")
    p = run(d, "ps")
    row = [l.split() for l in p.stdout.splitlines() if l.startswith("alpha")][0]
    assert row[1] == "ready" and row[2] == "gpu" and "from now" in p.stdout
    p = run(d, "status", "alpha")
    assert "state       ready, gpu, device host" in p.stdout and "pid" in p.stdout
    assert "1 loads" in p.stdout
    p = run(d, "offload", "alpha")
    assert p.returncode == 0 and p.stdout.startswith("alpha: offloaded (cpu")
    p = run(d, "load", "alpha")
    assert p.returncode == 0 and "ready" in p.stdout
    p = run(d, "keep-alive", "alpha", "forever")
    assert p.returncode == 0 and "keep-alive forever" in p.stdout
    assert d.status("alpha")["keep_alive_s"] == -1
    p = run(d, "keep-alive", "alpha", "90s")
    assert p.returncode == 0 and "keep-alive 1m30s" in p.stdout
    p = run(d, "unload", "alpha")
    assert p.returncode == 0 and p.stdout.startswith("alpha: unloaded")


def test_logs(d):
    assert run(d, "load", "beta").returncode == 0
    p = run(d, "logs", "beta", "-n", "5")
    assert p.returncode == 0 and "test_worker" in p.stdout
    assert len(p.stdout.strip().splitlines()) <= 5


def test_top_prints_events_when_not_a_tty(d):
    run(d, "unload", "beta")
    env = dict(os.environ, MODELBUF_URL=f"127.0.0.1:{d.port}")
    top = subprocess.Popen([TOOL, "top"], stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5 * SLOW)
    threading.Thread(target=lambda: run(d, "load", "beta")).start()
    seen = []
    deadline = time.time() + 30 * SLOW
    while time.time() < deadline and not any("loading -> ready" in s for s in seen):
        seen.append(top.stdout.readline())
    top.terminate()
    top.wait()
    assert any("beta" in s and "unloaded -> loading (load)" in s for s in seen), seen
    assert any("beta" in s and "loading -> ready (loaded)" in s for s in seen), seen


def test_top_on_a_terminal_quits_with_q(d):
    # On a terminal: the table (redrawn between events), then `q` quits and
    # the terminal gets its settings back.
    import pty
    import termios
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = dict(os.environ, MODELBUF_URL=f"127.0.0.1:{d.port}", TERM="xterm")
    top = subprocess.Popen([TOOL, "top"], stdin=slave, stdout=slave, stderr=slave, env=env)
    out = b""
    deadline = time.time() + 20 * SLOW
    while time.time() < deadline and b"q or Ctrl-C quits" not in out:
        import select
        if select.select([master], [], [], 0.2)[0]:
            out += os.read(master, 65536)
    assert b"q or Ctrl-C quits" in out and b"beta" in out, out[-2000:]
    os.write(master, b"q")
    try:
        rc = top.wait(timeout=10 * SLOW)
    finally:
        if top.poll() is None:
            top.kill()
    assert rc == 0
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)


def test_errors_and_exit_codes(d):
    p = run(d, "status", "nope")
    assert p.returncode == 1 and "not_found" in p.stderr and "nope" in p.stderr
    p = run(d, "offload", "beta")  # no hooks: it cannot offload
    assert p.returncode == 1 and "HTTP 409" in p.stderr
    p = run(d, "load")
    assert p.returncode == 2 and "Usage: modelbuf load" in p.stderr
    p = subprocess.run([TOOL, "ps", "--url", "127.0.0.1:1"], capture_output=True, text=True)
    assert p.returncode == 3 and "cannot reach modelbufd" in p.stderr
