"""The modelbuf tool as a client of a real modelbufd with real workers:
ps, status, load with progress, offload, unload, keep-alive, logs, top,
and its messages and exit codes when something is wrong; --help on every
command; the bash completion it writes."""
import json
import os
import re
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
def d(tmp_path_factory):
    weights = str(tmp_path_factory.mktemp("w") / "w.safetensors")
    subprocess.run([TOOL, "mkmodel", "--size", "1MiB", weights], check=True,
                   capture_output=True)
    daemon = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
defaults: {{keep_alive: 10m}}
models:
  alpha:
    cmd: {worker("--alloc-mb", "24", "--slow-start", "300")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    aliases: [alpha-one]
  beta:
    cmd: {worker()}
  gamma:
    cmd: {worker()}
  weights:
    backend: tensors
    files: [{weights}]
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
    assert [m["name"] for m in json.loads(p.stdout)["models"]] == ["alpha", "beta", "gamma",
                                                                    "weights"]
    p = run(d, "status", "beta", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["state"] == "unloaded"


def test_load_offload_keep_alive_unload(d):
    p = run(d, "load", "alpha", "--keep-alive", "5m")
    assert p.returncode == 0, p.stderr
    # Not a TTY: progress lines, then the result.
    assert p.stdout.strip().splitlines()[-1].startswith("alpha ready in ")
    p = run(d, "ps")
    row = [l.split() for l in p.stdout.splitlines() if l.startswith("alpha")][0]
    assert row[1] == "ready" and row[2] == "gpu" and " in 4m5" in p.stdout
    p = run(d, "status", "alpha")
    assert "state       ready, gpu, device host" in p.stdout and "pid" in p.stdout
    assert "1 loads" in p.stdout
    p = run(d, "offload", "alpha")
    assert p.returncode == 0 and p.stdout.startswith("alpha: offloaded (")
    assert p.stdout.rstrip().endswith(" host)"), p.stdout
    p = run(d, "load", "alpha")
    assert p.returncode == 0 and "ready" in p.stdout
    p = run(d, "keep-alive", "alpha", "forever")
    assert p.returncode == 0 and "keep-alive forever" in p.stdout
    assert "it was 10m: `modelbuf keep-alive alpha 10m` puts it back" in p.stdout
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


def test_ps_columns_fit_80_and_align(d):
    """One column per tier (GPU, HOST), sizes of three digits, each column
    as wide as its widest cell: a model on the GPU, one offloaded to host
    RAM and one unloaded fit 80 columns, every cell under its header."""
    assert run(d, "load", "alpha").returncode == 0
    assert run(d, "offload", "alpha").returncode == 0
    assert run(d, "load", "weights").returncode == 0
    p = run(d, "ps")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert all(len(l) <= 80 for l in lines), lines
    head = lines[0]
    assert head.split() == ["NAME", "STATE", "LOCATION", "DEVICE", "GPU", "HOST", "IN/QUEUE",
                            "UNTIL"]
    start = {h: head.index(h) for h in head.split()}
    end = {h: start[h] + len(h) for h in head.split()}
    rows = {l.split()[0]: l for l in lines[1:]}
    for name, row in rows.items():
        for col in ("NAME", "STATE", "LOCATION", "DEVICE", "IN/QUEUE", "UNTIL"):
            assert row[start[col]] != " " and (start[col] == 0 or row[start[col] - 1] == " "), \
                (col, row)
        for col in ("GPU", "HOST"):  # numbers end under their header's end
            assert row[end[col] - 1] != " " and row[end[col]] == " ", (col, row)

    def cell(name, col):  # a right-aligned cell: "-" or "NUMBER UNIT"
        words = rows[name][:end[col]].split()
        return words[-1] if words[-1] == "-" else " ".join(words[-2:])

    assert cell("alpha", "GPU") == "-"
    assert re.fullmatch(r"\d+(\.\d+)? MiB", cell("alpha", "HOST")), rows["alpha"]
    assert cell("weights", "GPU") == "1.00 MiB" and cell("weights", "HOST") == "-"
    assert cell("gamma", "GPU") == "-" and cell("gamma", "HOST") == "-"
    assert run(d, "unload", "alpha").returncode == 0


def test_help_on_every_command(d):
    """-h and --help on every command and benchmark print its usage on
    stdout and exit 0, wherever they are among the arguments; nothing is
    run (no daemon is asked)."""
    top = subprocess.run([TOOL, "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and top.stdout.startswith("Usage: modelbuf COMMAND")
    commands = re.findall(r"^  ([a-z-]+)  ", top.stdout.split("Commands:")[1].split("Options:")[0],
                          re.M)
    assert "ps" in commands and "bench" in commands and "completion" in commands
    invocations = [[c] for c in commands] + [["bench", b] for b in
                                             ("lifecycle", "load", "offload", "restore")]
    for args in invocations:
        for flag in ("--help", "-h"):
            for where in (args + [flag], args + ["x", flag]):
                p = subprocess.run([TOOL, *where], capture_output=True, text=True,
                                   env=dict(os.environ, MODELBUF_URL="127.0.0.1:1"))
                assert p.returncode == 0, (where, p.stdout, p.stderr)
                assert p.stdout.startswith("Usage: modelbuf " + " ".join(args)), (where, p.stdout)
                assert "-h, --help" in p.stdout and p.stderr == "", (where, p.stderr)
                assert all(len(l) <= 80 for l in p.stdout.splitlines()), where
    p = subprocess.run([TOOL, "help", "bench", "lifecycle"], capture_output=True, text=True)
    assert p.returncode == 0 and "--probe-path" in p.stdout
    p = subprocess.run([TOOL, "stauts"], capture_output=True, text=True)
    assert p.returncode == 2 and "did you mean 'status'?" in p.stderr


def test_unknown_model_suggests_names(d):
    p = run(d, "status", "alpah")
    assert p.returncode == 1 and "not_found" in p.stderr
    assert "did you mean 'alpha'" in p.stderr, p.stderr
    p = run(d, "load", "alpha-on")  # close to an alias
    assert p.returncode == 1 and "'alpha-one'" in p.stderr, p.stderr
    p = run(d, "unload", "zzzzzz")
    assert p.returncode == 1 and "modelbuf ps lists the models" in p.stderr


def test_keep_alive_zero_says_it_stays(d):
    p = run(d, "keep-alive", "beta", "0")
    assert p.returncode == 0, p.stderr
    assert "keep-alive 0: it leaves the GPU as soon as it is idle" in p.stdout
    assert "holds until it is changed again" in p.stdout
    assert "it was 10m: `modelbuf keep-alive beta 10m` puts it back" in p.stdout
    assert d.status("beta")["keep_alive_s"] == 0
    p = run(d, "keep-alive", "beta", "10m")  # as the undo says
    assert p.returncode == 0 and d.status("beta")["keep_alive_s"] == 600
    assert "it was 0:" in p.stdout


def test_logs_without_a_worker(d):
    """A tensors model has no worker, a model whose worker never ran has
    no log yet: each says why and exits 1, instead of printing nothing."""
    p = run(d, "logs", "weights")
    assert p.returncode == 1 and p.stdout == ""
    assert "weights is a tensors model" in p.stderr and "no worker" in p.stderr
    p = run(d, "logs", "weights", "-f")
    assert p.returncode == 1 and "tensors model" in p.stderr
    p = run(d, "logs", "gamma")
    assert p.returncode == 1 and p.stdout == ""
    assert "gamma has no worker log" in p.stderr and "modelbuf load gamma" in p.stderr
    p = run(d, "logs", "nope")
    assert p.returncode == 1 and "not_found" in p.stderr


def test_api_key_errors_say_what_to_do():
    k = Daemon("api_keys: [sekret]\nmodels: {m: {cmd: [/bin/true]}}\n")
    try:
        env = dict(os.environ, MODELBUF_URL=f"127.0.0.1:{k.port}")
        env.pop("MODELBUF_API_KEY", None)
        p = subprocess.run([TOOL, "ps"], capture_output=True, text=True, env=env)
        assert p.returncode == 1 and "HTTP 401" in p.stderr
        assert "Authorization: Bearer" in p.stderr and "X-API-Key" in p.stderr  # the daemon's
        assert "set MODELBUF_API_KEY=KEY" in p.stderr and "--api-key KEY" in p.stderr, p.stderr
        p = subprocess.run([TOOL, "ps", "--api-key", "wrong"], capture_output=True, text=True,
                           env=env)
        assert p.returncode == 1 and "refused the API key given" in p.stderr, p.stderr
        p = subprocess.run([TOOL, "ps"], capture_output=True, text=True,
                           env=dict(env, MODELBUF_API_KEY="sekret"))
        assert p.returncode == 0, p.stderr
    finally:
        assert k.stop() == 0


def test_bash_completion(d, tmp_path):
    """The script `modelbuf completion bash` writes completes commands,
    benchmarks, options and the daemon's model names."""
    script = tmp_path / "modelbuf.bash"
    p = subprocess.run([TOOL, "completion", "bash"], capture_output=True, text=True)
    assert p.returncode == 0
    script.write_text(p.stdout)

    def complete(line):
        words = line.split(" ")
        prog = (f"source {script}\n"
                f"COMP_WORDS=({' '.join(repr(w) if w else repr('') for w in words)})\n"
                f"COMP_CWORD={len(words) - 1}\n_modelbuf\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
        env = dict(os.environ, MODELBUF_URL=f"127.0.0.1:{d.port}",
                   PATH=os.path.dirname(TOOL) + ":" + os.environ["PATH"])
        r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return set(r.stdout.split())

    assert "status" in complete("modelbuf s") and "ps" not in complete("modelbuf s")
    assert complete("modelbuf keep") == {"keep-alive"}
    assert complete("modelbuf bench l") == {"lifecycle", "load"}
    assert complete("modelbuf logs -") == {"-n", "-f", "--url", "--api-key", "--help"}
    assert complete("modelbuf status ") == {"alpha", "beta", "gamma", "weights"}
    assert complete("modelbuf load g") == {"gamma"}
    assert "--probe-path" in complete("modelbuf bench lifecycle --pro")
