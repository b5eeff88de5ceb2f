"""The core's admission shortcuts against its full planning.

lib/admit.c answers most admission decisions from figures kept per plan
generation (auto_blocked, any_blocked, the fail caches, bound_wait) instead of
planning every device for every waiting model. Each shortcut is meant to
decide exactly what the full planning decides. `modelbuf sim
--check-admission` turns on the core's admission check: every decision a
shortcut takes is planned again in full, without the shortcuts, and the two
are compared. This runs it over the simulator's standard suite
(bench/scenarios/*.scn, every policy) and over random configurations
(devices, capacities, host tiers, keep-alives, model tables with fixed
devices, pinned models, concurrency and queue limits, the three trace
generators), and requires that no decision differs and that each shortcut
was checked.
"""
import json
import os
import random
import shlex
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(ROOT, "build"))
MODELBUF = os.path.join(BUILD, "cli", "modelbuf")
SCENARIOS = os.path.join(ROOT, "bench", "scenarios")
GIB = 1 << 30
MIB = 1 << 20


def run_checked(args):
    """Runs the simulator with the admission check; returns its results."""
    cmd = [MODELBUF, "sim"] + args + ["--policy", "all", "--check-admission", "--json"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.stdout, f"{shlex.join(cmd)}: no output, exit {p.returncode}: {p.stderr}"
    doc = json.loads(p.stdout)
    for r in doc["results"]:
        c = r["admission_check"]
        assert c["differ"] == 0, f"{shlex.join(cmd)}: {r['policy']}: {c['first']}"
    assert p.returncode == 0, f"{shlex.join(cmd)}: exit {p.returncode}: {p.stderr}"
    return doc["results"]


def scenario_args(path):
    with open(path) as f:
        return shlex.split(" ".join(line for line in f if not line.startswith("#")))


SUITE = sorted(f for f in os.listdir(SCENARIOS) if f.endswith(".scn"))


@pytest.mark.parametrize("scn", SUITE)
def test_standard_suite(scn):
    results = run_checked(scenario_args(os.path.join(SCENARIOS, scn)))
    checked = sum(c["admission_check"][k] for c in results
                  for k in ("auto_blocked", "any_blocked", "planned", "bound_wait"))
    assert checked > 0


def test_suite_checks_every_shortcut():
    seen = {"auto_blocked": 0, "any_blocked": 0, "planned": 0, "bound_wait": 0}
    for scn in SUITE:
        for r in run_checked(scenario_args(os.path.join(SCENARIOS, scn))):
            for k in seen:
                seen[k] += r["admission_check"][k]
    assert all(v > 0 for v in seen.values()), seen


def random_table(rng, n, devices):
    """A model table with what the generator never makes: fixed devices,
    pinned models, no offload, concurrency and queue limits, own
    keep-alives and queue timeouts."""
    models = []
    for i in range(n):
        fp = int(rng.choice([0.25, 0.5, 1, 2, 3, 6, 12, 20, 40]) * GIB)
        m = {"name": f"r{i:03d}", "footprint_bytes": fp,
             "load_ms": round(200 + fp / GIB * rng.uniform(200, 2000), 1),
             "unload_ms": rng.choice([10, 50, 200])}
        if rng.random() < 0.7:
            m["restore_ms"] = round(fp / GIB * rng.uniform(50, 150), 1)
            m["offload_ms"] = m["restore_ms"]
        if devices > 1 and rng.random() < 0.4:
            m["device"] = rng.randrange(devices)
        if rng.random() < 0.1:
            m["pinned"] = True
        if rng.random() < 0.2:
            m["max_concurrency"] = rng.choice([1, 2, 4])
        if rng.random() < 0.2:
            m["max_queue"] = rng.choice([0, 1, 4, 64])
        if rng.random() < 0.3:
            m["keep_alive_ms"] = rng.choice([0, 5000, 60000, 1800000, -1])
        if rng.random() < 0.2:
            m["queue_timeout_ms"] = rng.choice([1000, 30000, -1])
        if rng.random() < 0.1:
            m["offload"] = False
        models.append(m)
    return {"format": "modelbuf-models/1", "models": models}


def random_config(rng, tmp):
    devices = rng.choice([1, 1, 2, 3, 4, 6])
    args = ["--devices", str(devices),
            "--capacity", f"{rng.choice([8, 16, 24, 40, 80])}GiB",
            "--host", rng.choice(["0", "8GiB", "32GiB", "128GiB"]),
            "--keep-alive", rng.choice(["0", "10s", "5m", "30m", "-1"]),
            "--seed", str(rng.randrange(1, 1 << 30))]
    kind = rng.choice(["zipf", "diurnal", "burst"])
    gen = (f"{kind}:n={rng.choice([500, 2000, 5000])},rate={rng.choice([0.05, 0.5, 2, 20])},"
           f"s={rng.choice([0.6, 1.0, 1.4])},dur={rng.choice([0.2, 2, 30])}")
    if kind == "diurnal":
        gen += f",period={rng.choice([3600, 86400])}"
    if kind == "burst":
        gen += f",every={rng.choice([60, 600])},size={rng.choice([5, 40])}"
    args += ["--gen", gen]
    n = rng.randrange(3, 50)
    if rng.random() < 0.5:
        args += ["--gen-models", f"{n},min={rng.choice([128, 512])}MiB,"
                                 f"max={rng.choice([4, 16, 48])}GiB"]
    else:
        path = os.path.join(tmp, f"models-{rng.randrange(1 << 30)}.json")
        with open(path, "w") as f:
            json.dump(random_table(rng, n, devices), f)
        args += ["--models", path]
    return args


@pytest.mark.parametrize("seed", range(40))
def test_random_configurations(seed):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        run_checked(random_config(rng, tmp))
