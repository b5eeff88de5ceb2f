"""modelbuf bench lifecycle end to end: the real tool, a real plugin, real
files and real memory. A clean model passes the leak check; the same model
in its fault mode (keeps N MiB more after every load and restore) fails it
with the slope it leaks at; footprint and reclaimed memory match what the
model is known to hold (the bytes of its files)."""
import json
import os
import struct
import subprocess
import sys
import tempfile

import pytest

BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
TOOL = os.path.join(BUILD, "cli", "modelbuf")
PLUGIN = os.path.join(BUILD, "tests", "unit", "libplugin_test.so")
# RSS under ASan/TSan holds shadow memory and quarantine: the memory figures
# are checked in the plain build; sanitized builds check the runs are clean.
SANITIZED = os.environ.get("MB_SANITIZE", "none") not in ("", "none")
MiB = 1024 * 1024
# Sanitized builds run every byte through instrumentation: a smaller model,
# so the runs stay within their timeouts on a busy 2-core machine.
FILE_BYTES = (4 if SANITIZED else 24) * MiB


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="mb-lifecycle-") as d:
        with open(os.path.join(d, "w.bin"), "wb") as f:
            f.write(os.urandom(FILE_BYTES))
        with open(os.path.join(d, "modelbuf.yaml"), "w") as f:
            f.write(f"""devices: [{{host: true, budget: 1GiB}}]
models:
  m:
    backend: plugin
    plugin: {PLUGIN}
    files: [{d}/w.bin]
    probe: {{method: GET, path: /info}}
""")
        yield d


def bench(workdir, cycles, leak_mb=0, extra=()):
    env = dict(os.environ)
    if leak_mb:
        env["MB_TEST_PLUGIN_LEAK_MB"] = str(leak_mb)
    p = subprocess.run([TOOL, "bench", "lifecycle", "m", "--config",
                        os.path.join(workdir, "modelbuf.yaml"), "--cycles", str(cycles),
                        "--json", *extra],
                       capture_output=True, text=True, env=env, timeout=600 if SANITIZED else 120)
    return p.returncode, json.loads(p.stdout), p.stderr


def test_clean_model_passes(workdir):
    n = 3 if SANITIZED else 6
    rc, r, err = bench(workdir, n)
    assert r["cycles"] == n and len(r["per_cycle"]) == n
    # The plugin holds exactly its files' bytes on the device.
    assert r["device_peak_bytes"] == FILE_BYTES
    for c in r["per_cycle"]:
        assert c["host_offloaded_bytes"] == FILE_BYTES
        assert c["restore_ms"] is not None and c["offload_ms"] is not None
    if SANITIZED:
        assert rc in (0, 4), err
        return
    assert rc == 0, err
    assert r["leak"] is False, r["verdict"]
    # RSS while resident: the table, plus at most 8 MiB of everything else.
    assert FILE_BYTES <= r["host_peak_bytes"] <= FILE_BYTES + 8 * MiB
    assert r["reclaimed_device_pct"] >= 90
    assert abs(r["growth_bytes_per_cycle"]) < 1 * MiB
    assert r["first_inference_ms"] is not None
    assert r["reserve_bytes"] == r["footprint_bytes"] * 3 // 2
    assert any("Reserve" in a for a in r["advice"])


def test_leaking_model_fails_with_its_slope(workdir):
    # 4 MiB per load and per restore, two restores a cycle: 12 MiB a cycle.
    if SANITIZED:  # the figures are checked in the plain build
        return
    rc, r, err = bench(workdir, 6, leak_mb=4)
    if SANITIZED:
        assert rc in (0, 4), err
        return
    assert rc == 4, err  # the failing verdict has its own exit status
    assert r["leak"] is True
    assert 11 * MiB <= r["growth_bytes_per_cycle"] <= 13 * MiB, r["growth_bytes_per_cycle"]
    assert 3.5 * MiB <= r["growth_bytes_per_restore"] <= 4.5 * MiB
    assert "FAIL" in r["verdict"]
    assert any("leaks" in a for a in r["advice"])


def test_report_and_chart(workdir):
    png = os.path.join(workdir, "chart.png")
    p = subprocess.run([TOOL, "bench", "lifecycle", "m", "--config",
                        os.path.join(workdir, "modelbuf.yaml"), "--cycles", "3", "--chart", png],
                       capture_output=True, text=True, timeout=600 if SANITIZED else 120)
    assert p.returncode in ((0, 4) if SANITIZED else (0,)), p.stderr
    for words in ("cold load", "warm load", "reclaimed by unload", "leak check", "advice:"):
        assert words in p.stdout
    if os.path.exists("/usr/bin/gnuplot"):
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_input(workdir):
    cfg = os.path.join(workdir, "modelbuf.yaml")
    p = subprocess.run([TOOL, "bench", "lifecycle", "nope", "--config", cfg],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "no model 'nope'" in p.stderr
    p = subprocess.run([TOOL, "bench", "lifecycle", "m", "--config", cfg, "--cycles", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    p = subprocess.run([TOOL, "bench", "lifecycle", "m", "--config",
                        os.path.join(workdir, "missing.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "missing.yaml" in p.stderr


WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "test_worker.py")


def worker_config(d, name, *flags):
    cmd = ["/usr/bin/python3", WORKER, "--port", "${PORT}", *flags]
    path = os.path.join(d, name + ".yaml")
    with open(path, "w") as f:
        f.write(f"""devices: [{{host: true, budget: 2GiB}}]
models:
  w:
    cmd: {json.dumps(cmd)}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    probe: {{method: POST, path: /infer, body: '{{"q": 1}}'}}
""")
    return path


def bench_worker(cfg, cycles=4):
    p = subprocess.run([TOOL, "bench", "lifecycle", "w", "--config", cfg, "--cycles",
                        str(cycles), "--restores", "3", "--json"],
                       capture_output=True, text=True, timeout=900 if SANITIZED else 300)
    return p.returncode, json.loads(p.stdout), p.stderr


def test_worker_process_clean_and_leaking(workdir):
    # A worker holding 48 MiB of weights: its process group's RSS says so.
    rc, r, err = bench_worker(worker_config(workdir, "clean", "--alloc-mb", "48"))
    assert r["host_peak_bytes"] >= 48 * MiB, r["host_peak_bytes"]
    assert r["first_inference_ms"] is not None and r["restore_ms"] is not None
    # Its memory is gone with its processes after each unload.
    assert r["reclaimed_os_pct"] == 100 and r["per_cycle"][-1]["os_residue_bytes"] == 0
    if not SANITIZED:
        assert rc == 0, err
        assert r["leak"] is False, r["verdict"]
        assert abs(r["growth_bytes_per_restore"]) < 2 * MiB
    # The same worker keeping 16 MiB more after every restore: caught, with
    # its slope, though each cycle starts a fresh process.
    rc, r, err = bench_worker(worker_config(workdir, "leaky", "--alloc-mb", "8",
                                            "--grow-mb", "16"))
    if not SANITIZED:
        assert rc == 4, err
        assert r["leak"] is True and "per restore" in r["verdict"], r["verdict"]
        # At least what it keeps; Python's allocator adds a little on top
        # (the offload and restore copies of its weights are heap-allocated).
        assert 14 * MiB <= r["growth_bytes_per_restore"] <= 28 * MiB, r["growth_bytes_per_restore"]


def mkmodel(path, size):
    p = subprocess.run([TOOL, "mkmodel", "--format", "safetensors", "--size", size, path],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([TOOL, "inspect", path, "--json"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return host_arena_bytes(json.loads(p.stdout))


def host_arena_bytes(doc):
    # The host device's arena: the data span, starting at its offset within
    # its first page as in the file, in whole 4 KiB pages (docs/TENSORS.md).
    start = min(t["offset"] for t in doc["tensors"])
    return (start % 4096 + doc["data_bytes"] + 4095) // 4096 * 4096


def test_tensors_model(workdir):
    # The tensors backend in this process: a real safetensors file loaded
    # into the host device's arena, offloaded to its host copy, restored,
    # unloaded; the probe looks every tensor up and reads all its bytes.
    path = os.path.join(workdir, "t.safetensors")
    arena = mkmodel(path, "8MiB" if SANITIZED else "64MiB")
    cfg = os.path.join(workdir, "tensors.yaml")
    with open(cfg, "w") as f:
        f.write(f"""devices: [{{host: true, budget: 1GiB}}]
models:
  t:
    backend: tensors
    files: [{path}]
""")
    n = 3 if SANITIZED else 5
    p = subprocess.run([TOOL, "bench", "lifecycle", "t", "--config", cfg, "--cycles", str(n),
                        "--json"], capture_output=True, text=True,
                       timeout=600 if SANITIZED else 120)
    r = json.loads(p.stdout)
    assert r["cold"] is True and r["cold_load_ms"] is not None
    # Its footprint is its file's data, on the device and in the host copy.
    assert r["footprint_bytes"] == arena and r["device_peak_bytes"] == arena, r
    for c in r["per_cycle"]:
        assert c["host_offloaded_bytes"] == arena
        assert c["first_inference_ms"] is not None and c["restore_ms"] is not None
    if SANITIZED:
        assert p.returncode in (0, 4), p.stderr
        return
    assert p.returncode == 0, p.stderr
    assert r["leak"] is False, r["verdict"]
    assert r["reclaimed_device_pct"] >= 90 and r["reclaimed_os_pct"] >= 90, r
    # In this process the RSS holds the arena, and from the first offload on
    # the host copy as well (kept for the next offload): not growth.
    assert arena <= r["host_peak_bytes"] <= 2 * arena + 8 * MiB, r["host_peak_bytes"]
    assert abs(r["growth_bytes_per_restore"]) < 1 * MiB
    assert r["reserve_bytes"] == arena * 3 // 2


def write_shard(path, tensors):
    """A safetensors file of F32 tensors {name: [rows, cols]} (random bytes)."""
    header, off = {}, 0
    for name, (r, c) in tensors.items():
        header[name] = {"dtype": "F32", "shape": [r, c], "data_offsets": [off, off + r * c * 4]}
        off += r * c * 4
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + os.urandom(off))


def test_same_model_as_the_daemon_builds(workdir):
    # A sharded model named by its folder: what `modelbufd --check-config`
    # accepts, `bench lifecycle` runs, for every backend (one construction).
    folder = os.path.join(workdir, "shards")
    os.makedirs(folder, exist_ok=True)
    rows = 256 if SANITIZED else 1024
    data = 0
    for k in range(2):
        tensors = {f"layer{k}.{j}": (rows, 512) for j in range(4)}
        write_shard(os.path.join(folder, f"model-{k + 1:05d}-of-00002.safetensors"), tensors)
        data += 4 * rows * 512 * 4
    worker_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers",
                             "test_worker.py")
    cfg = os.path.join(workdir, "folders.yaml")
    with open(cfg, "w") as f:
        f.write(f"""devices: [{{host: true, budget: 1GiB}}]
models:
  t:
    backend: tensors
    files: [{folder}]
  p:
    backend: plugin
    plugin: {PLUGIN}
    files: [{folder}/]
    probe: {{method: GET, path: /info}}
  w:
    cmd: [/usr/bin/python3, {worker_py}, --port, "${{PORT}}"]
    files: [{folder}]
    probe: {{method: POST, path: /infer, body: "{{}}"}}
""")
    daemon = os.path.join(BUILD, "daemon", "modelbufd")
    if os.path.exists(daemon):
        p = subprocess.run([daemon, "--check-config", cfg], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0 and "ok: 3 models" in p.stdout, p.stdout + p.stderr
    for name in ("t", "p", "w"):
        p = subprocess.run([TOOL, "bench", "lifecycle", name, "--config", cfg, "--cycles", "2",
                            "--json"], capture_output=True, text=True,
                           timeout=600 if SANITIZED else 120)
        assert p.returncode in ((0, 4) if SANITIZED else (0,)), (name, p.stderr)
        r = json.loads(p.stdout)
        assert r["cycles"] == 2 and r["first_inference_ms"] is not None, (name, r)
        if name == "t":  # both shards, in whole pages
            assert data <= r["footprint_bytes"] <= data + 2 * 8192, (data, r)
        if name == "p":  # the plugin got both files
            assert r["device_peak_bytes"] == sum(
                os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder)), r


def check_comparison(out, names):
    """The comparison's JSON: one entry per model, the average reclamation
    and the memory plan, each figure derived from the models' own."""
    assert [m["model"] for m in out["models"]] == names and out["failed"] == []
    back = [min(m["reclaimed_device_pct"], m["reclaimed_os_pct"]) for m in out["models"]]
    assert abs(out["average_reclaimed_pct"] - sum(back) / len(back)) < 0.06
    plan, = out["plans"]
    largest = max(out["models"], key=lambda m: m["footprint_bytes"])
    assert plan["largest_model"] == largest["model"]
    assert plan["reserve_bytes"] == largest["footprint_bytes"] * 3 // 2
    assert plan["fit_at_reserve"] == plan["usable_bytes"] // plan["reserve_bytes"]
    for m, pm in zip(out["models"], plan["per_model"]):
        assert pm["model"] == m["model"] and pm["reserve_bytes"] == m["footprint_bytes"] * 3 // 2
        assert pm["fit"] == plan["usable_bytes"] // pm["reserve_bytes"]
    assert plan["all_reserve_bytes"] == sum(pm["reserve_bytes"] for pm in plan["per_model"])
    return {m["model"]: m for m in out["models"]}


def test_several_models_compared(workdir):
    # A clean worker and one that keeps 16 MiB more after each restore,
    # measured one after the other and compared: table, average, plan.
    cfg = os.path.join(workdir, "several.yaml")
    with open(cfg, "w") as f:
        f.write(f"""devices: [{{host: true, budget: 1GiB}}]
models:
  clean:
    cmd: {json.dumps(["/usr/bin/python3", WORKER, "--port", "${PORT}", "--alloc-mb", "32"])}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    probe: {{method: POST, path: /infer, body: '{{"q": 1}}'}}
  leaky:
    cmd: {json.dumps(["/usr/bin/python3", WORKER, "--port", "${PORT}", "--alloc-mb", "8",
                      "--grow-mb", "16"])}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
""")
    p = subprocess.run([TOOL, "bench", "lifecycle", "--all", "--config", cfg, "--cycles", "3",
                        "--restores", "3", "--json"], capture_output=True, text=True,
                       timeout=900 if SANITIZED else 300)
    out = json.loads(p.stdout)
    by = check_comparison(out, ["clean", "leaky"])
    assert out["plans"][0]["usable_bytes"] == 1 << 30
    assert by["clean"]["backend"] == "process" and by["clean"]["footprint_bytes"] >= 32 * MiB
    if not SANITIZED:
        assert p.returncode == 4, p.stderr  # one of them leaks
        assert by["clean"]["leak_tier"] == "PASS" and by["clean"]["leak"] is False
        # 16 MiB a restore, three restores a residency: 48 MiB and more.
        assert by["leaky"]["leak_tier"] in ("CAUTION", "FAIL"), by["leaky"]["growth_run_bytes"]
        assert by["leaky"]["growth_run_bytes"] >= 3 * 14 * MiB
    # The same two by name, as a table.
    p = subprocess.run([TOOL, "bench", "lifecycle", "leaky", "clean", "--config", cfg,
                        "--cycles", "1", "--restores", "1"], capture_output=True, text=True,
                       timeout=900 if SANITIZED else 300)
    assert p.returncode in (0, 4), p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "2 models compared"
    rows = [ln.split()[0] for ln in lines if ln.startswith(("clean ", "leaky "))]
    assert rows[:2] == ["leaky", "clean"]
    assert any(ln.startswith("average reclamation: ") for ln in lines)
    assert any(ln.startswith("memory plan on host (usable 1.00 GiB):") for ln in lines), p.stdout
    assert any("reserve 1.5x the largest footprint (" in ln for ln in lines), p.stdout
    assert any(ln.startswith("  all of them at once: ") for ln in lines)
    # Probe flags are for one model; an unknown model fails its row only.
    p = subprocess.run([TOOL, "bench", "lifecycle", "--all", "--config", cfg,
                        "--probe-path", "/x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    p = subprocess.run([TOOL, "bench", "lifecycle", "--all", "clean", "--config", cfg],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    p = subprocess.run([TOOL, "bench", "lifecycle", "clean", "nope", "--config", cfg,
                        "--cycles", "1", "--restores", "0", "--json"], capture_output=True,
                       text=True, timeout=900 if SANITIZED else 300)
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["failed"] == [{"model": "nope", "status": 1}]
    assert [m["model"] for m in out["models"]] == ["clean"] and "no model 'nope'" in p.stderr


# ---------------------------------------------------------------------------
# Against a running modelbufd (--url): the same figures through its HTTP API.

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import DAEMON, Daemon, worker  # noqa: E402

KEY = "lifecycle-key"


@pytest.fixture(scope="module")
def daemon(workdir):
    if not os.path.exists(DAEMON):
        pytest.skip("modelbufd is not in this build")
    mkmodel(os.path.join(workdir, "served.safetensors"), "8MiB" if SANITIZED else "32MiB")
    d = Daemon(f"""api_keys: ["{KEY}"]
devices: [{{host: true, budget: 2GiB}}]
defaults: {{keep_alive: 30s}}
models:
  clean:
    cmd: {worker("--alloc-mb", "48")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    files: [{workdir}/w.bin]
    probe: {{method: POST, path: /infer, body: '{{"q": 1}}'}}
  leaky:
    cmd: {worker("--alloc-mb", "8", "--grow-mb", "16")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
  weights:
    backend: tensors
    files: [{workdir}/served.safetensors]
""")
    yield d
    assert d.stop() == 0, d.logs()[-3000:]


def api(d, method, path, body=None):
    return d.request(method, path, body=body,
                     headers={"Authorization": "Bearer " + KEY})[:2]


def bench_url(d, model, *args, env_key=True):
    env = dict(os.environ)
    env.pop("MODELBUF_URL", None)
    env.pop("MODELBUF_CONFIG", None)
    if env_key:
        env["MODELBUF_API_KEY"] = KEY
    p = subprocess.run([TOOL, "bench", "lifecycle", model, "--url", f"127.0.0.1:{d.port}",
                        "--json", *args], capture_output=True, text=True, env=env,
                       timeout=600 if SANITIZED else 240)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


def test_daemon_clean_worker_passes(daemon):
    d = daemon
    # Found ready with a keep-alive of its own: measured, then put back so.
    code, st = api(d, "POST", "/api/models/clean/load", {"keep_alive": "10m"})
    assert code == 200 and st["state"] == "ready", st
    # --config names its files (dropped from the page cache first) and its probe.
    rc, r, err = bench_url(d, "clean", "--config", d.cfg, "--cycles", "4", "--restores", "3")
    assert r is not None, err
    assert rc == 0, err
    assert r["source"] == f"modelbufd at http://127.0.0.1:{d.port}" and r["device"] == "host"
    assert r["cold"] is True and r["cold_load_ms"] is not None
    assert r["leak"] is False, r["verdict"]
    # The worker's 48 MiB, as the daemon measures it (RSS of its processes).
    assert r["device_peak_bytes"] >= 48 * MiB and r["footprint_bytes"] >= 48 * MiB
    assert r["first_inference_ms"] is not None and r["restore_ms"] is not None
    # Nothing of it is left after each unload, by the model's and the device's figures.
    assert r["reclaimed_device_pct"] == 100 and r["reclaimed_os_pct"] == 100
    for c in r["per_cycle"]:
        assert c["os_residue_bytes"] == 0 and c["device_residue_bytes"] == 0, c
        assert c["host_offloaded_bytes"] >= 48 * MiB
    assert abs(r["growth_bytes_per_restore"]) < 2 * MiB
    code, st = api(d, "GET", "/api/models/clean")
    assert st["state"] == "ready" and st["keep_alive_s"] == 600, st
    # Its own load, four cycles, and the load that put it back.
    assert st["stats"]["loads"] == 6 and st["stats"]["restores"] == 12, st["stats"]
    api(d, "POST", "/api/models/clean/unload")


def test_daemon_leaky_worker_fails_with_its_slope(daemon):
    # The worker keeping 16 MiB more after every restore; the probe from the
    # flags, the key from --api-key, no files known: the first load is warm.
    rc, r, err = bench_url(daemon, "leaky", "--cycles", "4", "--restores", "3",
                           "--probe-method", "POST", "--probe-path", "/infer",
                           "--probe-body", '{"q": 2}', "--api-key", KEY, env_key=False)
    assert r is not None, err
    assert rc == 4, err
    assert r["leak"] is True and "per restore" in r["verdict"], r["verdict"]
    assert 14 * MiB <= r["growth_bytes_per_restore"] <= 28 * MiB, r["growth_bytes_per_restore"]
    assert any("leaks" in a for a in r["advice"])
    assert r["cold"] is False and "files" in r["cold_note"]
    assert r["first_inference_ms"] is not None
    code, st = api(daemon, "GET", "/api/models/leaky")
    assert st["state"] == "unloaded", st  # as it was found


def test_daemon_report_and_errors(daemon):
    d = daemon
    # One cycle, no restores, the default probe (GET of the health path):
    # no verdict, and the report says where it was measured.
    env = dict(os.environ, MODELBUF_API_KEY=KEY)
    env.pop("MODELBUF_CONFIG", None)
    p = subprocess.run([TOOL, "bench", "lifecycle", "leaky", "--url", f"127.0.0.1:{d.port}",
                        "--cycles", "1", "--restores", "0"], capture_output=True, text=True,
                       env=env, timeout=600 if SANITIZED else 120)
    assert p.returncode == 0, p.stderr
    assert f"model leaky on host through modelbufd at http://127.0.0.1:{d.port}" in p.stdout
    assert "first load not cold" in p.stdout and "leak check" in p.stdout
    # MODELBUF_URL alone (no configuration named) picks the daemon too.
    env["MODELBUF_URL"] = f"127.0.0.1:{d.port}"
    p = subprocess.run([TOOL, "bench", "lifecycle", "nope"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 1 and "not_found" in p.stderr, p.stderr
    del env["MODELBUF_API_KEY"]
    p = subprocess.run([TOOL, "bench", "lifecycle", "leaky"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 1 and "unauthorized" in p.stderr, p.stderr
    p = subprocess.run([TOOL, "bench", "lifecycle", "leaky", "--url", "127.0.0.1:1"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 3 and "cannot reach modelbufd" in p.stderr, p.stderr
    p = subprocess.run([TOOL, "bench", "lifecycle", "leaky", "--url", "127.0.0.1:1",
                        "--probe-body", "{}"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 2


def test_daemon_tensors_model(daemon, workdir):
    # A tensors model held by the daemon itself: no --config (its files come
    # from its status, so the first load is cold), the default probe lists
    # its tensors; its arena is its footprint, all of it back after unload.
    arena = host_arena_bytes(json.loads(subprocess.run(
        [TOOL, "inspect", os.path.join(workdir, "served.safetensors"), "--json"],
        capture_output=True, text=True, timeout=60).stdout))
    rc, r, err = bench_url(daemon, "weights", "--cycles", "3", "--restores", "2")
    assert r is not None, err
    assert rc == 0 or (SANITIZED and rc == 4), err
    assert r["cold"] is True and r["cold_load_ms"] is not None, r.get("cold_note")
    assert r["first_inference_ms"] is not None and r["restore_ms"] is not None
    assert r["footprint_bytes"] == arena and r["device_peak_bytes"] == arena, r
    for c in r["per_cycle"]:
        assert c["device_residue_bytes"] == 0 and c["host_offloaded_bytes"] == arena, c
    assert r["reclaimed_device_pct"] == 100
    code, st = api(daemon, "GET", "/api/models/weights")
    assert st["state"] == "unloaded" and st["stats"]["restores"] == 6, st


def test_daemon_all_models_compared(daemon):
    # --all through the daemon: every model it serves, whatever its backend.
    env = dict(os.environ, MODELBUF_API_KEY=KEY)
    env.pop("MODELBUF_CONFIG", None)
    p = subprocess.run([TOOL, "bench", "lifecycle", "--all", "--url", f"127.0.0.1:{daemon.port}",
                        "--cycles", "1", "--restores", "1", "--json"], capture_output=True,
                       text=True, env=env, timeout=900 if SANITIZED else 300)
    assert p.returncode in (0, 4), p.stderr
    by = check_comparison(json.loads(p.stdout), ["clean", "leaky", "weights"])
    assert by["weights"]["backend"] == "tensors" and by["clean"]["backend"] == "process"
    assert all(m["source"] == f"modelbufd at http://127.0.0.1:{daemon.port}"
               for m in by.values())
    for name in ("clean", "leaky", "weights"):
        assert api(daemon, "GET", "/api/models/" + name)[1]["state"] == "unloaded"
