#!/usr/bin/python3
"""torch_server.py - a small PyTorch model API that modelbufd can manage.

A byte-level transformer built in code (no downloads): the weights come from
a seeded generator, so two starts with the same options give the same
model. With the defaults (--dim 512 --layers 4) it holds about 13 million
parameters, 50 MiB in float32; --dim 1024 --layers 4 gives about 200 MiB.

Routes (HTTP/1.1, JSON):
  GET  /health          200 {"status": "ok", "location": "device"|"host",
                        "device": "cuda:0"|"cpu", "parameters": N, "bytes": B}
  POST /v1/embeddings   OpenAI shape: {"input": "text" | ["text", ...]} ->
                        {"object": "list", "data": [{"object": "embedding",
                        "index": i, "embedding": [...]}], "model", "usage"}
  POST /infer           {"input": "text", "max_tokens": 16} -> greedy
                        continuation, byte by byte: {"output", "tokens"}
  POST /v1/completions  OpenAI shape: {"prompt", "max_tokens"} ->
                        {"choices": [{"text"}]}, the same continuation
  POST /offload         weights to a host copy (CUDA: .to("cpu") and
                        empty_cache; CPU-only: a separate host copy is made
                        and the "device" copy dropped)
  POST /restore         weights back onto the device
  POST /cleanup         gc and empty_cache

While offloaded, /v1/embeddings and /infer answer 503 {"error": "offloaded"}.
Options come from flags, or from TORCH_SERVER_<FLAG> environment variables
(e.g. TORCH_SERVER_DIM=1024). Runs under Debian's /usr/bin/python3 with the
python3-torch package.
"""
import argparse
import gc
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn


def env_default(name, default, conv=int):
    v = os.environ.get("TORCH_SERVER_" + name.upper())
    return conv(v) if v not in (None, "") else default


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--port", type=int, required=True)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--model", default=env_default("model", "tiny-gpt", str))
p.add_argument("--dim", type=int, default=env_default("dim", 512))
p.add_argument("--layers", type=int, default=env_default("layers", 4))
p.add_argument("--heads", type=int, default=env_default("heads", 8))
p.add_argument("--max-len", type=int, default=env_default("max_len", 512))
p.add_argument("--seed", type=int, default=env_default("seed", 0))
p.add_argument("--threads", type=int, default=env_default("threads", 0))
p.add_argument("--device", default=env_default("device", "auto", str),
               help="auto (cuda:0 when CUDA is usable, else cpu), cpu, cuda, cuda:N")
a = p.parse_args()

if a.dim % a.heads:
    sys.exit(f"torch_server: --dim {a.dim} is not a multiple of --heads {a.heads}")
if a.threads > 0:
    torch.set_num_threads(a.threads)
if a.device == "auto":
    DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
else:
    DEVICE = torch.device(a.device)
CUDA = DEVICE.type == "cuda"
VOCAB = 256  # bytes are the tokens


class ByteTransformer(nn.Module):
    def __init__(self, dim, layers, heads, max_len):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids, pad_mask, causal=False):
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        h = self.tok(ids) + self.pos(pos)[None, :, :]
        mask = None
        if causal:
            mask = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), diagonal=1)
        h = self.body(h, mask=mask, src_key_padding_mask=pad_mask)
        return self.norm(h)


torch.manual_seed(a.seed)
t0 = time.time()
model = ByteTransformer(a.dim, a.layers, a.heads, a.max_len).eval().to(DEVICE)
N_PARAMS = sum(t.numel() for t in model.parameters())
N_BYTES = sum(t.numel() * t.element_size() for t in model.parameters())
print(f"torch_server {a.model}: {N_PARAMS} parameters ({N_BYTES / 2**20:.1f} MiB) on {DEVICE}, "
      f"built in {time.time() - t0:.2f}s, port {a.port}", flush=True)

lock = threading.Lock()  # the model is used, offloaded and restored under it
state = {"location": "device", "host": None}


def offload():
    """Weights to a host copy; the device copy is freed."""
    with lock:
        if state["location"] == "host":
            return
        if CUDA:
            model.to("cpu")
            torch.cuda.empty_cache()
        else:
            # CPU-only: keep a separate host copy and drop the "device" one,
            # so the memory the model held is given back and taken anew.
            state["host"] = {n: t.detach().clone() for n, t in model.state_dict().items()}
            for t in list(model.parameters()) + list(model.buffers()):
                t.data = torch.empty(0, dtype=t.dtype)
        state["location"] = "host"
        gc.collect()


def restore():
    with lock:
        if state["location"] == "device":
            return
        if CUDA:
            model.to(DEVICE)
        else:
            host = state["host"]
            named = dict(model.named_parameters())
            named.update(dict(model.named_buffers()))
            for n, t in named.items():
                t.data = host[n]
            state["host"] = None
        state["location"] = "device"
        gc.collect()


def cleanup():
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def encode(texts):
    """Bytes of each text, cut to max_len, padded; returns ids and pad mask."""
    seqs = [list(t.encode("utf-8")[: a.max_len]) or [0] for t in texts]
    n = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), n), dtype=torch.long)
    pad = torch.ones((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        pad[i, : len(s)] = False
    return ids.to(DEVICE), pad.to(DEVICE), sum(len(s) for s in seqs)


def embed(texts):
    with lock, torch.no_grad():
        if state["location"] != "device":
            return None, 0
        ids, pad, ntok = encode(texts)
        h = model(ids, pad)
        keep = (~pad).unsqueeze(-1).float()
        v = (h * keep).sum(1) / keep.sum(1)
        v = nn.functional.normalize(v, dim=-1)
        return v.cpu().tolist(), ntok


def generate(text, max_tokens):
    with lock, torch.no_grad():
        if state["location"] != "device":
            return None, 0
        ids = list(text.encode("utf-8"))[-(a.max_len - 1):] or [0]
        out = []
        for _ in range(max_tokens):
            x = torch.tensor([ids[-a.max_len:]], dtype=torch.long, device=DEVICE)
            pad = torch.zeros_like(x, dtype=torch.bool)
            h = model(x, pad, causal=True)[0, -1]
            nxt = int(torch.argmax(h @ model.tok.weight.T))
            ids.append(nxt)
            out.append(nxt)
        return bytes(out).decode("utf-8", errors="replace"), len(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the
    # body waits for the ACK of the headers, which the daemon's side delays
    # (up to 40 ms) on a reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        print("torch_server: " + fmt % args, flush=True)

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        return doc

    def do_GET(self):
        if self.path.split("?")[0] == "/health":
            self.reply(200, {"status": "ok", "model": a.model, "location": state["location"],
                             "device": str(DEVICE), "parameters": N_PARAMS, "bytes": N_BYTES,
                             "pid": os.getpid()})
        else:
            self.reply(404, {"error": "no route " + self.path})

    def do_POST(self):
        path = self.path.split("?")[0]
        try:
            doc = self.body()
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            self.reply(400, {"error": f"bad JSON body: {e}"})
            return
        if path == "/v1/embeddings":
            inp = doc.get("input")
            texts = [inp] if isinstance(inp, str) else inp
            if not isinstance(texts, list) or not texts or \
                    not all(isinstance(t, str) for t in texts):
                self.reply(400, {"error": "input must be a string or a non-empty list of strings"})
                return
            vecs, ntok = embed(texts)
            if vecs is None:
                self.reply(503, {"error": "offloaded"})
                return
            self.reply(200, {"object": "list", "model": doc.get("model", a.model),
                             "data": [{"object": "embedding", "index": i, "embedding": v}
                                      for i, v in enumerate(vecs)],
                             "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})
        elif path == "/infer":
            text = doc.get("input", "")
            n = doc.get("max_tokens", 16)
            if not isinstance(text, str) or not isinstance(n, int) or not 0 <= n <= 256:
                self.reply(400, {"error": "input must be a string, max_tokens 0..256"})
                return
            out, ntok = generate(text, n)
            if out is None:
                self.reply(503, {"error": "offloaded"})
                return
            self.reply(200, {"model": a.model, "output": out, "tokens": ntok,
                             "device": str(DEVICE)})
        elif path == "/v1/completions":
            prompt = doc.get("prompt", "")
            n = doc.get("max_tokens", 16)
            if not isinstance(prompt, str) or not isinstance(n, int) or not 0 <= n <= 256:
                self.reply(400, {"error": "prompt must be a string, max_tokens 0..256"})
                return
            out, ntok = generate(prompt, n)
            if out is None:
                self.reply(503, {"error": "offloaded"})
                return
            self.reply(200, {"object": "text_completion", "model": doc.get("model", a.model),
                             "choices": [{"index": 0, "text": out, "finish_reason": "length"}],
                             "usage": {"completion_tokens": ntok}})
        elif path in ("/offload", "/restore", "/cleanup"):
            t = time.time()
            {"/offload": offload, "/restore": restore, "/cleanup": cleanup}[path]()
            self.reply(200, {"status": "ok", "location": state["location"],
                             "seconds": round(time.time() - t, 4)})
        else:
            self.reply(404, {"error": "no route " + self.path})


server = ThreadingHTTPServer((a.host, a.port), Handler)
server.daemon_threads = True
print(f"torch_server {a.model}: listening on {a.host}:{a.port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
