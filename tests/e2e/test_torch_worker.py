"""The example PyTorch worker (examples/workers/torch_server.py) behind the
real daemon: a cold load, inference, an offload that moves the weights to
host RAM, a restore that brings them back with the same answers, and the
OpenAI route by alias."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import Daemon  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
SERVER = os.path.join(ROOT, "examples", "workers", "torch_server.py")

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # scripts/deps.sh installs python3-torch
    HAVE_TORCH = False


@pytest.mark.skipif(not HAVE_TORCH, reason="python3-torch is not installed (scripts/deps.sh)")
def test_torch_worker_lifecycle():
    d = Daemon(f"""devices: [{{host: true, budget: 4GiB}}]
models:
  torch:
    cmd: [/usr/bin/python3, {SERVER}, --port, "${{PORT}}", --dim, "128", --layers, "2"]
    start_timeout: 120s
    aliases: [tiny-gpt]
    hooks:
      offload: {{path: /offload}}
      restore: {{path: /restore}}
      cleanup: {{path: /cleanup}}
""")
    try:
        code, a, hdr = d.post("/m/torch/infer", {"input": "hello", "max_tokens": 6})
        assert code == 200 and isinstance(a["output"], str), a
        assert float(hdr["X-Modelbuf-Load-Ms"]) > 0
        st = d.wait_until("torch", lambda s: s["inflight"] == 0)
        assert st["state"] == "ready" and st["vram_bytes"] > 10 << 20
        code, st, _ = d.post("/api/models/torch/offload")
        assert code == 200 and st["state"] == "offloaded" and st["host_bytes"] > 10 << 20
        code, b, hdr = d.post("/m/torch/infer", {"input": "hello", "max_tokens": 6})
        assert code == 200 and b["output"] == a["output"]  # same weights after the round trip
        assert d.status("torch")["stats"]["restores"] == 1
        code, c, _ = d.post("/v1/completions", {"model": "tiny-gpt", "prompt": "hello",
                                                 "max_tokens": 6})
        assert code == 200 and c["choices"][0]["text"] == a["output"]
        code, e, _ = d.post("/v1/embeddings", {"model": "torch", "input": ["a", "b"]})
        assert code == 200 and len(e["data"]) == 2 and len(e["data"][0]["embedding"]) == 128
        assert d.post("/api/cleanup")[0] == 200
    finally:
        assert d.stop() == 0
