"""OpenAI done properly, end to end: the example PyTorch worker
(examples/workers/torch_server.py) behind the real daemon, called by the
official OpenAI Node SDK (from npm: models.list, models.retrieve of a name
with '/', chat and text completions plain and streamed) and by the Python
package; /v1/models lists only the models that speak OpenAI, each alias as
its own id; names and aliases with '/'; every CLI command takes an alias."""
import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import BUILD, SLOW, Daemon, worker  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.path.join(ROOT, "examples", "workers", "torch_server.py")
NODE_DIR = os.path.join(ROOT, "tests", "e2e", "node")
CLI = os.path.join(BUILD, "cli", "modelbuf")
SLASHED = "Qwen/Qwen2.5-0.5B-Instruct"
KEY = "sk-modelbuf-test"

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # scripts/deps.sh installs python3-torch
    HAVE_TORCH = False

pytestmark = pytest.mark.skipif(not HAVE_TORCH,
                                reason="python3-torch is not installed (scripts/deps.sh)")


@pytest.fixture(scope="module")
def d():
    cmd = ["/usr/bin/python3", SERVER, "--port", "${PORT}", "--dim", "64", "--layers", "1",
           "--heads", "4", "--max-len", "128"]
    daemon = Daemon(f"""api_keys: ["{KEY}"]
devices: [{{host: true, budget: 4GiB}}]
defaults: {{keep_alive: 10m}}
models:
  torch:
    cmd: [{", ".join(json.dumps(x) for x in cmd)}]
    start_timeout: 2m
    max_concurrency: 2
    aliases: [tiny-gpt, {SLASHED}]
    hooks:
      offload: {{path: /offload}}
      restore: {{path: /restore}}
      cleanup: {{path: /cleanup}}
  plain:
    cmd: {worker()}
  declared:
    cmd: {worker()}
    openai: true
  org/named:
    cmd: {worker()}
""")
    yield daemon
    assert daemon.stop() == 0


AUTH = {"Authorization": "Bearer " + KEY}


def get(d, path):
    return d.request("GET", path, headers=AUTH)


def post(d, path, body):
    return d.request("POST", path, body=body, headers=AUTH)


def sse(d, path, body):
    """The data lines of a streamed answer, as they came."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=120 * SLOW)
    c.request("POST", path, body=json.dumps(body), headers={**AUTH,
                                                             "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    lines = [ln.decode().rstrip("\r\n") for ln in r.read().splitlines()]
    c.close()
    return [ln[6:] for ln in lines if ln.startswith("data: ")]


def test_v1_models_lists_only_openai_models_each_alias_an_id(d):
    code, lst, _ = get(d, "/v1/models")
    ids = [m["id"] for m in lst["data"]]
    assert code == 200 and lst["object"] == "list"
    assert sorted(ids) == sorted(["torch", "tiny-gpt", SLASHED, "declared"])
    assert all(m["object"] == "model" and m["owned_by"] == "modelbuf" for m in lst["data"])
    for mid in ("tiny-gpt", SLASHED, "declared"):
        code, m, _ = get(d, "/v1/models/" + mid)  # the '/' as it is
        assert code == 200 and m["id"] == mid, (mid, m)
    code, m, _ = get(d, "/v1/models/Qwen%2FQwen2.5-0.5B-Instruct")  # and percent-encoded
    assert code == 200 and m["id"] == SLASHED
    for mid in ("plain", "nope", "org/named", "..", "a%00b"):
        code, err, _ = get(d, "/v1/models/" + mid)
        assert code == 404 and err["error"]["code"] == "model_not_found", mid
    # Routing by the body still takes any worker model by its name.
    code, out, _ = post(d, "/v1/chat/completions", {"model": "plain", "messages": []})
    assert code == 200 and out["model"] == "plain"


def test_names_with_a_slash_route_everywhere(d):
    code, out, _ = post(d, "/m/org%2Fnamed/infer", {"x": 1})
    assert code == 200 and out["model"] == "org/named" and out["path"] == "/infer"
    code, st, _ = get(d, "/api/models/org%2Fnamed")
    assert code == 200 and st["name"] == "org/named" and st["state"] == "ready"
    code, st, _ = get(d, "/api/models/" + SLASHED.replace("/", "%2F"))
    assert code == 200 and st["name"] == "torch"
    code, out, _ = post(d, "/v1/embeddings", {"model": "org/named", "input": "x"})
    assert code == 200 and out["model"] == "org/named"
    # A raw '/' ends the name's segment: /m/org/named is model "org".
    code, err, _ = post(d, "/m/org/named/infer", {})
    assert code == 404 and "'org'" in err["error"]["message"]


def test_torch_worker_chat_and_completions_plain_and_streamed(d):
    msgs = [{"role": "user", "content": "hello"}]
    code, chat, hdr = post(d, "/v1/chat/completions",
                           {"model": "tiny-gpt", "messages": msgs, "max_tokens": 8})
    assert code == 200, chat
    assert chat["object"] == "chat.completion" and chat["model"] == "tiny-gpt"
    assert chat["id"].startswith("chatcmpl-")
    msg = chat["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"]["completion_tokens"] == 8
    # Streamed: OpenAI's chunks, then [DONE]; the same text (greedy).
    data = sse(d, "/v1/chat/completions", {"model": SLASHED, "messages": msgs,
                                           "max_tokens": 8, "stream": True,
                                           "stream_options": {"include_usage": True}})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(x) for x in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == msg["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "length" and all(f is None for f in finals[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    # Text completions, both ways.
    code, comp, _ = post(d, "/v1/completions", {"model": "torch", "prompt": "hello",
                                                "max_tokens": 8})
    assert code == 200 and comp["object"] == "text_completion"
    data = sse(d, "/v1/completions", {"model": "torch", "prompt": "hello", "max_tokens": 8,
                                      "stream": True})
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(x)["choices"][0]["text"] for x in data[:-1]) == \
        comp["choices"][0]["text"]
    # OpenAI's errors for bad values.
    code, err, _ = post(d, "/v1/chat/completions", {"model": "torch", "messages": msgs,
                                                    "max_tokens": -1})
    assert code == 400 and err["error"]["param"] == "max_tokens"
    code, err, _ = post(d, "/v1/chat/completions", {"model": "torch", "messages": "x"})
    assert code == 400 and err["error"]["type"] == "invalid_request_error"


def test_stop_sequences_cut_the_text(d):
    msgs = [{"role": "user", "content": "hello"}]
    code, full, _ = post(d, "/v1/completions", {"model": "torch", "prompt": "hello",
                                                "max_tokens": 12})
    text = full["choices"][0]["text"]
    stop = text[3:5]
    if not stop.strip("\ufffd"):
        pytest.skip("the model's text has no usable stop string")
    code, cut, _ = post(d, "/v1/completions", {"model": "torch", "prompt": "hello",
                                               "max_tokens": 12, "stop": stop})
    assert code == 200 and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[:text.find(stop)]
    data = sse(d, "/v1/chat/completions", {"model": "torch", "messages": msgs,
                                           "max_tokens": 12, "stream": True, "stop": ["\x00"]})
    assert data[-1] == "[DONE]"


def npm_ready():
    """The OpenAI SDK in tests/e2e/node/node_modules, installed by `npm ci`
    from the committed lock file when it is not there yet; else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if os.path.exists(os.path.join(NODE_DIR, "node_modules", "openai", "package.json")):
        return None
    try:
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "npm ci timed out (no registry?)"
    if p.returncode != 0:
        return "npm ci failed (no registry?): " + (p.stderr or p.stdout)[-300:]
    return None


def test_openai_node_sdk(d):
    why = npm_ready()
    if why:
        pytest.skip("the OpenAI Node SDK cannot be installed: " + why)
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    p = subprocess.run(["node", os.path.join(NODE_DIR, "openai_client.mjs"),
                        f"http://127.0.0.1:{d.port}", "tiny-gpt", SLASHED],
                       capture_output=True, text=True, timeout=300 * SLOW, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert sorted(out["list"]) == sorted(["torch", "tiny-gpt", SLASHED, "declared"])
    assert out["retrieve"]["id"] == SLASHED and out["retrieve"]["object"] == "model"
    assert out["missing"]["status"] == 404 and out["missing"]["notFound"] is True
    content = out["chat"]["choices"][0]["message"]["content"]
    assert out["chat"]["model"] == "tiny-gpt" and out["chat"]["usage"]["completion_tokens"] == 8
    streamed = "".join((c["choices"][0]["delta"].get("content") or "")
                       for c in out["chatChunks"] if c["choices"])
    assert streamed == content and out["chatChunks"][-1]["usage"]["completion_tokens"] == 8
    assert len(out["chatChunks"]) >= 3  # role, tokens, finish: the stream loop saw them all
    text = out["completion"]["choices"][0]["text"]
    assert "".join(c["choices"][0]["text"] for c in out["completionChunks"]) == text
    assert out["unknown"] == {"status": 404, "notFound": True}


def test_python_package_openai(d, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import modelbuf
    c = modelbuf.Client(f"http://127.0.0.1:{d.port}", api_key=KEY)
    ids = {m["id"] for m in c.openai.models()}
    assert ids == {"torch", "tiny-gpt", SLASHED, "declared"}
    assert c.openai.model(SLASHED)["id"] == SLASHED
    msgs = [{"role": "user", "content": "hello"}]
    chat = c.openai.chat(SLASHED, msgs, max_tokens=8)
    chunks = list(c.openai.chat("tiny-gpt", msgs, max_tokens=8, stream=True))
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks
                   if ch["choices"]) == chat["choices"][0]["message"]["content"]
    comp = c.openai.completions("torch", "hello", max_tokens=8)
    parts = list(c.openai.completions("torch", "hello", max_tokens=8, stream=True))
    assert "".join(p["choices"][0]["text"] for p in parts) == comp["choices"][0]["text"]
    emb = c.openai.embeddings("tiny-gpt", ["a", "b"])
    assert len(emb["data"]) == 2 and len(emb["data"][0]["embedding"]) == 64
    with pytest.raises(modelbuf.NotFound):
        c.openai.chat("nope", msgs)
    with pytest.raises(modelbuf.BadRequest):
        c.openai.chat("torch", msgs, max_tokens=9999)

    async def main():
        a = modelbuf.AsyncClient(f"http://127.0.0.1:{d.port}", api_key=KEY)
        got = [ch async for ch in await a.openai.chat(SLASHED, msgs, max_tokens=8, stream=True)]
        await a.aclose()
        return "".join(ch["choices"][0]["delta"].get("content", "") for ch in got if ch["choices"])
    import asyncio
    assert asyncio.run(main()) == chat["choices"][0]["message"]["content"]


def cli(d, *args):
    env = dict(os.environ, MODELBUF_URL=f"http://127.0.0.1:{d.port}", MODELBUF_API_KEY=KEY)
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120 * SLOW,
                          env=env)


def test_every_cli_command_takes_an_alias(d):
    assert post(d, "/api/models/torch/unload", {})[0] == 200
    p = cli(d, "load", SLASHED)
    assert p.returncode == 0 and "ready" in p.stdout, p.stdout + p.stderr
    assert get(d, "/api/models/torch")[1]["state"] == "ready"
    p = cli(d, "status", "tiny-gpt", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["name"] == "torch"
    p = cli(d, "status", SLASHED)
    assert p.returncode == 0 and "torch" in p.stdout
    p = cli(d, "keep-alive", "tiny-gpt", "forever")
    assert p.returncode == 0, p.stderr
    assert d.request("GET", "/api/models/torch", headers=AUTH)[1]["keep_alive_s"] == -1
    p = cli(d, "logs", SLASHED, "-n", "5")
    assert p.returncode == 0 and p.stdout
    p = cli(d, "offload", "tiny-gpt")
    assert p.returncode == 0 and "offloaded" in p.stdout, p.stdout + p.stderr
    p = cli(d, "unload", SLASHED)
    assert p.returncode == 0 and "unloaded" in p.stdout
    p = cli(d, "status", "org/named")
    assert p.returncode == 0 and "org/named" in p.stdout
    p = cli(d, "status", "nope/none")
    assert p.returncode == 1 and "not_found" in p.stderr


def test_make_run_demo_speaks_openai():
    """examples/modelbuf.yaml as `make run` serves it: tiny-gpt answers chat
    completions plain and streamed, and /v1/models lists only it."""
    import http.client
    import signal
    import socket
    import tempfile
    import time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    tmp = tempfile.mkdtemp(prefix="mb-demo-")
    weights = os.path.join(tmp, "w.safetensors")
    subprocess.run([CLI, "mkmodel", "--format", "safetensors", "--size", "1MiB", weights],
                   check=True, capture_output=True)
    log = open(os.path.join(tmp, "daemon.log"), "w+")
    # A smaller network than the demo's, the same code.
    env = dict(os.environ, MODELBUF_EXAMPLE_WEIGHTS=weights, TORCH_SERVER_DIM="128",
               TORCH_SERVER_LAYERS="2")
    env.pop("MODELBUF_API_KEY", None)
    p = subprocess.Popen([os.path.join(BUILD, "daemon", "modelbufd"), "--config",
                          "examples/modelbuf.yaml", "--listen", f"127.0.0.1:{port}"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def call(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300 * SLOW)
        c.request(method, path, body=None if body is None else json.dumps(body))
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, raw

    try:
        deadline = time.time() + 20 * SLOW
        while True:
            try:
                if call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert p.poll() is None and time.time() < deadline, log.read()
            time.sleep(0.05)
        code, raw = call("GET", "/v1/models")
        assert code == 200
        assert sorted(m["id"] for m in json.loads(raw)["data"]) == \
            ["modelbuf/tiny-gpt", "tiny-gpt", "torch"]
        msgs = [{"role": "user", "content": "hi"}]
        code, raw = call("POST", "/v1/chat/completions",
                         {"model": "tiny-gpt", "messages": msgs, "max_tokens": 4})
        assert code == 200, raw
        text = json.loads(raw)["choices"][0]["message"]["content"]
        code, raw = call("POST", "/v1/chat/completions",
                         {"model": "modelbuf/tiny-gpt", "messages": msgs, "max_tokens": 4,
                          "stream": True})
        lines = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
        assert code == 200 and lines[-1] == "[DONE]"
        assert "".join(json.loads(x)["choices"][0]["delta"].get("content", "")
                       for x in lines[:-1]) == text
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60 * SLOW) == 0
