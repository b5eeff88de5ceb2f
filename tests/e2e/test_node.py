"""A node of a fleet, end to end: the node's name (node:, --node,
MODELBUF_NODE, else the host's name) in /health, /api/models, a model's
status, every /metrics sample and every answer's X-Modelbuf-Node;
GET /api/resident; and a 503 cannot_fit that says why, and when to ask
again (Retry-After), in a form a balancer reads. Real daemon, real
workers, real HTTP."""
import http.client
import json
import os
import re
import socket
import subprocess
import tempfile

import pytest

from test_daemon import DAEMON, SLOW, Daemon, worker

CONFIG = f"""
node: gpu-node-7.example
devices: [{{host: true, budget: 256MiB}}]
limits: {{retry_after: 9s}}
defaults: {{keep_alive: 5m}}
models:
  a:
    cmd: {worker("--alloc-mb", "8")}
    aliases: [gpt-a]
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
  b:
    cmd: {worker()}
  big:
    cmd: {worker()}
    vram: 1GiB
    aliases: [gpt-big]
"""

NODE = "gpu-node-7.example"


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CONFIG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def raw(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60 * SLOW)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, r.getheader("X-Modelbuf-Node"), r


def test_node_in_health_models_and_status(d):
    code, h, hdr = d.get("/health")
    assert code == 200 and h["node"] == NODE and hdr["X-Modelbuf-Node"] == NODE
    code, doc, hdr = d.get("/api/models")
    assert code == 200 and doc["node"] == NODE and hdr["X-Modelbuf-Node"] == NODE
    assert {m["name"] for m in doc["models"]} == {"a", "b", "big"}
    assert all(m["node"] == NODE for m in doc["models"])
    code, st, hdr = d.get("/api/models/gpt-a")
    assert code == 200 and st["name"] == "a" and st["node"] == NODE
    assert hdr["X-Modelbuf-Node"] == NODE


def test_every_answer_names_the_node(d):
    # Proxied (/m/ and OpenAI), management, errors, HEAD, the dashboard: all carry it.
    code, body, hdr = d.post("/m/a/infer", {"x": 1})
    assert code == 200 and hdr["X-Modelbuf-Node"] == NODE and "X-Modelbuf-Load-Ms" in hdr
    code, body, hdr = d.post("/v1/chat/completions", {"model": "gpt-a", "messages": []})
    assert code == 200 and body["path"] == "/v1/chat/completions"
    assert hdr["X-Modelbuf-Node"] == NODE
    for method, path in (("GET", "/m/nope/x"), ("GET", "/no/such/route"), ("HEAD", "/health"),
                         ("POST", "/api/models/a/keep-alive"), ("GET", "/"),
                         ("GET", "/dashboard/app.js"), ("GET", "/api/devices")):
        code, _, node, _ = raw(d.port, method, path, b"{}" if method == "POST" else None)
        assert node == NODE, (method, path, code)


def test_worker_cannot_forge_the_daemons_headers(d):
    code, data, node, r = raw(d.port, "GET", "/m/a/forge")
    assert code == 200 and node == NODE
    assert r.headers.get_all("X-Modelbuf-Node") == [NODE]
    assert r.headers.get_all("X-Modelbuf-Load-Ms") != ["12345"]
    assert len(r.headers.get_all("X-Modelbuf-Load-Ms")) == 1


def test_metrics_label_every_sample_with_the_node(d):
    d.post("/m/a/infer", {})
    code, text, _ = d.get("/metrics")
    assert code == 200
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(samples) > 20
    for ln in samples:
        name, _, value = ln.rpartition(" ")
        float(value)
        assert re.fullmatch(r'[a-z_]+\{(.+,)?node="gpu-node-7\.example"\}', name), ln
    assert f'modelbuf_model_state{{model="a",state="ready",node="{NODE}"}} 1' in samples
    assert f'modelbuf_http_connections{{node="{NODE}"}}' in text


def test_resident_lists_what_holds_memory(d):
    assert d.post("/m/a/infer", {})[0] == 200
    assert d.post("/m/b/infer", {})[0] == 200
    code, doc, hdr = d.get("/api/resident")
    assert code == 200 and doc["node"] == NODE
    assert sorted(doc["gpu"]) == ["a", "b"] and doc["cpu"] == [] and doc["loading"] == []
    assert sorted(hdr["X-Modelbuf-Resident"].split(",")) == ["a", "b"]
    assert d.post("/api/models/a/offload")[0] == 200
    code, doc, hdr = d.get("/api/resident")
    assert doc["gpu"] == ["b"] and doc["cpu"] == ["a"] and hdr["X-Modelbuf-Resident"] == "b"
    # HEAD: the header alone, for a balancer's poll.
    code, data, node, r = raw(d.port, "HEAD", "/api/resident")
    assert code == 200 and data == b"" and r.getheader("X-Modelbuf-Resident") == "b"
    assert d.post("/api/models/b/unload")[0] == 200
    code, doc, hdr = d.get("/api/resident")
    assert doc["gpu"] == [] and hdr["X-Modelbuf-Resident"] == ""
    code, _, _ = d.post("/api/resident")
    assert code == 405


def check_cannot_fit(code, body, hdr):
    assert code == 503, (code, body)
    err = body["error"]
    assert err["code"] == "cannot_fit" and err["reason"] == "too_large", err
    assert err["node"] == NODE and err["need_bytes"] == 1 << 30
    assert err["usable_bytes"] == 256 << 20
    # Nothing here frees room for it: Retry-After is limits.retry_after.
    assert err["retry_after_s"] == 9 and hdr["Retry-After"] == "9"
    assert hdr["X-Modelbuf-Reason"] == "too_large" and hdr["X-Modelbuf-Node"] == NODE
    assert "big" in err["message"]


def test_cannot_fit_says_why_and_when(d):
    check_cannot_fit(*d.post("/m/big/infer", {}))
    check_cannot_fit(*d.post("/v1/completions", {"model": "gpt-big", "prompt": "x"}))
    check_cannot_fit(*d.post("/api/models/big/load"))
    check_cannot_fit(*d.post("/api/models/big/acquire", {"ttl": "10s"}))
    # Counted as a 5xx of the model.
    code, text, _ = d.get("/metrics")
    m = re.search(r'^modelbuf_requests_total\{model="big",code="5xx",node="[^"]+"\} (\d+)$',
                  text, re.M)
    assert m and int(m.group(1)) >= 4


def check(config, *args, env=None):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config)
    try:
        e = {k: v for k, v in os.environ.items() if k != "MODELBUF_NODE"}
        e.update(env or {})
        return subprocess.run([DAEMON, "--check-config", f.name, *args], capture_output=True,
                              text=True, env=e, timeout=30 * SLOW)
    finally:
        os.unlink(f.name)


@pytest.mark.parametrize("bad", ['"has space"', '""', '"tab\\there"', '"quo\\"te"',
                                 '"back\\\\slash"', '"' + "n" * 254 + '"', '"caf\\u00e9"',
                                 "[a, b]"])
def test_bad_node_names_are_refused(bad):
    r = check(f"node: {bad}\n")
    assert r.returncode == 1, (bad, r.stdout, r.stderr)
    assert ":1:7: node:" in r.stderr, r.stderr


def test_node_name_precedence():
    # The host's name by default; the file; MODELBUF_NODE over it; --node over both.
    host = socket.gethostname()
    r = check("models: {}\n")
    assert r.returncode == 0 and f", node {host}," in r.stdout, r.stdout
    r = check("node: n" + "x" * 252 + "\n")
    assert r.returncode == 0 and ", node n" + "x" * 252 + "," in r.stdout
    r = check("node: from-file\n")
    assert ", node from-file," in r.stdout
    r = check("node: from-file\n", env={"MODELBUF_NODE": "from-env"})
    assert ", node from-env," in r.stdout
    r = check("node: from-file\n", "--node", "from-flag", env={"MODELBUF_NODE": "from-env"})
    assert ", node from-flag," in r.stdout
    r = check("node: ok\n", "--node", "bad name")
    assert r.returncode == 1 and "--node: a node name" in r.stderr
    r = check("node: ok\n", env={"MODELBUF_NODE": "bad\"name"})
    assert r.returncode == 1 and "MODELBUF_NODE: a node name" in r.stderr
    r = check("node: ${NODE_NAME:-from-default}\n")
    assert ", node from-default," in r.stdout


def test_default_node_is_the_host_name():
    daemon = Daemon("devices: [{host: true, budget: 64MiB}]\nmodels: {}\n")
    try:
        assert daemon.get("/health")[1]["node"] == socket.gethostname()
    finally:
        assert daemon.stop() == 0
