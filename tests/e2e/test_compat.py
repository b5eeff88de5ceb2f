"""modelbufd end to end: the compatibility routes that clients of the common
Python GPU-manager model APIs call unchanged (GET /api/gpu/status, POST
/api/gpu/offload and /api/gpu/release, GET /health, POST /cleanup-memory,
X-API-Key), replayed as those clients call them, with the fields and values
they read. Real daemon, real workers."""
import datetime
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import Daemon, worker  # noqa: E402

HOOKS = "{offload: {path: /offload}, restore: {path: /restore}, cleanup: {path: /cleanup}}"


@pytest.fixture(scope="module")
def one():
    """A one-model daemon: the routes show and act on that model."""
    d = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
defaults: {{keep_alive: 10m, host_keep_alive: 10m}}
models:
  concept:
    cmd: {worker("--alloc-mb", "24")}
    hooks: {HOOKS}
""")
    yield d
    assert d.stop() == 0


def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flat_status_shape(st):
    """The fields a GPU-manager client reads, with their types."""
    assert st["model_location"] in ("GPU", "CPU", "UNLOADED"), st
    for k in ("idle_time", "gpu_memory_allocated_gb", "gpu_memory_reserved_gb",
              "timeout_seconds"):
        assert number(st[k]), (k, st)
    assert st["gpu_memory_reserved_gb"] >= st["gpu_memory_allocated_gb"]
    stats = st["statistics"]
    for k in ("total_loads", "gpu_to_cpu", "cpu_to_gpu", "full_releases"):
        assert isinstance(stats[k], int), (k, stats)
    return st


def test_gpu_manager_session_replayed(one):
    d = one
    # GET /api/gpu/status before any use: flat, the model not loaded.
    code, st, _ = d.get("/api/gpu/status")
    assert code == 200
    flat_status_shape(st)
    assert st["model_location"] == "UNLOADED" and st["gpu_memory_allocated_gb"] == 0
    assert st["statistics"] == {"total_loads": 0, "gpu_to_cpu": 0, "cpu_to_gpu": 0,
                                "full_releases": 0}
    assert st["timeout_seconds"] == 600

    # A request loads it: on the GPU, memory counted.
    assert d.post("/m/concept/infer", {"x": 1})[0] == 200
    st = flat_status_shape(d.get("/api/gpu/status")[1])
    assert st["model_location"] == "GPU" and st["statistics"]["total_loads"] == 1
    assert st["gpu_memory_allocated_gb"] > 20 / 1024  # its 24 MiB of weights

    # idle_time counts from the last use, and an offload does not restart it.
    time.sleep(0.6)
    before = d.get("/api/gpu/status")[1]["idle_time"]
    assert before >= 0.5
    code, out, _ = d.post("/api/gpu/offload")
    assert code == 200 and out["status"] == "success" and isinstance(out["message"], str)
    assert out["model_location"] == "CPU"
    st = flat_status_shape(d.get("/api/gpu/status")[1])
    assert st["model_location"] == "CPU" and st["statistics"]["gpu_to_cpu"] == 1
    assert st["idle_time"] >= before, (before, st["idle_time"])
    assert st["gpu_memory_allocated_gb"] == 0

    # Offload again: it is on the CPU already, still a success.
    code, out, _ = d.post("/api/gpu/offload", {})
    assert code == 200 and out["status"] == "success" and out["model_location"] == "CPU"

    # Release from the CPU, then a use and a release straight from the GPU:
    # both are full releases.
    code, out, _ = d.post("/api/gpu/release")
    assert code == 200 and out["status"] == "success" and out["model_location"] == "UNLOADED"
    assert d.get("/api/gpu/status")[1]["statistics"]["full_releases"] == 1
    assert d.post("/m/concept/infer", {"x": 2})[0] == 200
    code, out, _ = d.post("/api/gpu/release", {"model": "concept"})
    assert code == 200 and out["model_location"] == "UNLOADED"
    st = d.get("/api/gpu/status")[1]
    assert st["statistics"] == {"total_loads": 2, "gpu_to_cpu": 1, "cpu_to_gpu": 0,
                                "full_releases": 2}

    # Offload of a model that is not loaded cannot be done: an error status.
    code, out, _ = d.post("/api/gpu/offload")
    assert code == 409 and out["status"] == "error", out
    assert out["error"]["code"] == "state_conflict" and out["message"]
    # Releasing what is released already is no error.
    code, out, _ = d.post("/api/gpu/release")
    assert code == 200 and out["status"] == "success"


def test_restore_counts_cpu_to_gpu(one):
    d = one
    assert d.post("/m/concept/infer", {})[0] == 200
    assert d.post("/api/gpu/offload")[0] == 200
    before = d.get("/api/gpu/status")[1]["statistics"]["cpu_to_gpu"]
    assert d.post("/m/concept/infer", {})[0] == 200  # restored by the request
    st = d.get("/api/gpu/status")[1]
    assert st["model_location"] == "GPU" and st["statistics"]["cpu_to_gpu"] == before + 1


def test_health_as_clients_check_it(one):
    d = one
    assert d.post("/m/concept/infer", {})[0] == 200
    code, h, _ = d.get("/health")
    assert code == 200 and h["status"] == "healthy"
    ts = datetime.datetime.fromisoformat(h["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()) < 60
    assert isinstance(h["active_jobs"], int) and isinstance(h["gpu_available"], bool)
    assert h["gpu_available"] is False  # the host device
    mem = h["gpu_memory"]
    assert number(mem["allocated_mb"]) and number(mem["reserved_mb"])
    assert mem["allocated_mb"] > 20 and mem["reserved_mb"] >= mem["allocated_mb"]
    # Today's fields stay.
    for k in ("version", "uptime_s", "queued", "devices"):
        assert k in h


def test_cleanup_memory(one):
    d = one
    assert d.post("/m/concept/infer", {})[0] == 200
    code, out, _ = d.post("/cleanup-memory")
    assert code == 200 and out["status"] == "success", out
    assert isinstance(out["message"], str) and out["message"]
    assert number(out["gpu_memory_allocated_mb"]) and number(out["gpu_memory_reserved_mb"])
    assert out["gpu_memory_allocated_mb"] > 20
    assert out["cleaned"] == ["concept"] and "devices" in out


def test_timeout_seconds_in_model_status(one):
    st = one.status("concept")
    assert st["timeout_seconds"] == 600 == st["keep_alive_s"]
    code, st, _ = one.post("/api/models/concept/keep-alive", {"keep_alive": -1})
    assert code == 200 and st["timeout_seconds"] == -1
    code, st, _ = one.post("/api/models/concept/keep-alive", {"keep_alive": "10m"})
    assert code == 200 and st["timeout_seconds"] == 600


def test_compat_routes_answer_head_and_refuse_other_methods(one):
    code, _, hdr = one.request("HEAD", "/api/gpu/status")
    assert code == 200 and int(hdr["Content-Length"]) > 0
    code, err, hdr = one.request("DELETE", "/api/gpu/offload")
    assert code == 405 and hdr["Allow"] == "POST"
    code, err, _ = one.get("/api/gpu/status?model=nope")
    assert code == 404 and err["error"]["code"] == "not_found"
    code, err, _ = one.post("/api/gpu/offload?model=concept", {"model": "other"})
    assert code == 400


def test_several_models_map_query_and_compat_model():
    d = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
defaults: {{keep_alive: 10m}}
models:
  speech:
    cmd: {worker("--alloc-mb", "8")}
    hooks: {HOOKS}
    aliases: [whisper-1]
  plain:
    cmd: {worker()}
""")
    try:
        # Several models and none named: the per-model map.
        code, st, _ = d.get("/api/gpu/status")
        assert code == 200 and set(st["models"]) == {"speech", "plain"}
        flat_status_shape(st["models"]["speech"])
        # ?model= (an alias too): that one, flat.
        code, st, _ = d.get("/api/gpu/status?model=whisper-1")
        assert code == 200 and st["model"] == "speech" and st["model_location"] == "UNLOADED"
        assert d.post("/m/plain/infer", {})[0] == 200
        assert d.post("/m/speech/infer", {})[0] == 200
        # A model without offload hooks cannot offload: an error status,
        # never 200, and it stays on the GPU.
        code, out, _ = d.post("/api/gpu/offload", {"model": "plain"})
        assert code == 409 and out["status"] == "error", out
        assert out["error"]["code"] == "not_supported" and out["model_location"] == "GPU"
        # No model named: every loaded one; one of them cannot: an error status,
        # the other is offloaded all the same.
        code, out, _ = d.post("/api/gpu/offload")
        assert code == 409 and out["status"] == "error"
        assert out["models"]["speech"] == "ok" and out["models"]["plain"] != "ok"
        assert d.status("speech")["state"] == "offloaded"
        code, out, _ = d.post("/api/gpu/release")
        assert code == 200 and out["status"] == "success"
        assert set(out["models"]) == {"speech", "plain"}
        assert d.status("plain")["state"] == "unloaded"
    finally:
        assert d.stop() == 0
    # compat.model: the routes show and act on it without a name.
    d = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
compat: {{model: whisper-1}}
models:
  speech:
    cmd: {worker("--alloc-mb", "8")}
    hooks: {HOOKS}
    aliases: [whisper-1]
  plain:
    cmd: {worker()}
""")
    try:
        code, st, _ = d.get("/api/gpu/status")
        assert code == 200 and st["model"] == "speech" and "models" not in st
        assert d.post("/m/speech/infer", {})[0] == 200
        code, out, _ = d.post("/api/gpu/offload")
        assert code == 200 and out["model"] == "speech" and out["model_location"] == "CPU"
        assert d.status("plain")["state"] == "unloaded"
    finally:
        assert d.stop() == 0


def test_cleanup_memory_reports_a_failing_hook():
    d = Daemon(f"""devices: [{{host: true}}]
models:
  good:
    cmd: {worker()}
    hooks: {{cleanup: {{path: /cleanup}}}}
  bad:
    cmd: {worker()}
    hooks: {{cleanup: {{path: /no-such-route}}}}
""")
    try:
        assert d.post("/m/good/infer", {})[0] == 200
        assert d.post("/m/bad/infer", {})[0] == 200
        code, out, _ = d.post("/cleanup-memory")
        assert code == 502 and out["status"] == "error", out
        assert out["cleaned"] == ["good"] and "404" in out["failed"]["bad"]
        assert number(out["gpu_memory_allocated_mb"])
    finally:
        assert d.stop() == 0


def test_x_api_key_wherever_bearer_works():
    d = Daemon(f"""api_keys: ["k-one"]
devices: [{{host: true}}]
models:
  m:
    cmd: {worker()}
    hooks: {HOOKS}
""")
    try:
        key = {"X-API-Key": "k-one"}
        assert d.get("/health")[0] == 200  # open
        for method, path, body in (("GET", "/api/gpu/status", None),
                                   ("GET", "/api/models/m", None),
                                   ("POST", "/m/m/infer", b"{}"),
                                   ("POST", "/api/gpu/offload", b"{}"),
                                   ("POST", "/cleanup-memory", b""),
                                   ("POST", "/v1/chat/completions",
                                    b'{"model": "m", "messages": []}')):
            code, _, _ = d.request(method, path, body=body)
            assert code == 401, (method, path)
            code, _, _ = d.request(method, path, body=body, headers={"X-API-Key": "nope"})
            assert code == 401, (method, path)
            code, doc, _ = d.request(method, path, body=body, headers=key)
            assert code in (200, 409), (method, path, code, doc)
            code, doc, _ = d.request(method, path, body=body,
                                     headers={"Authorization": "Bearer k-one"})
            assert code in (200, 409), (method, path, code, doc)
    finally:
        assert d.stop() == 0
