#!/usr/bin/python3
"""A real PyTorch model API for modelbufd (Debian's python3-torch, no
downloads): a small byte-level transformer language model built in code
with seeded weights, served over HTTP from the standard library.

  GET  /health            {"status", "location", "device", "parameters", "bytes"}
  POST /infer             {"input": "text", "max_tokens": 16} -> greedy continuation
  POST /v1/completions    OpenAI shape: {"prompt", "max_tokens"} -> {"choices": [{"text"}]}
  POST /v1/embeddings     OpenAI shape: {"input": "text" | [...]} -> mean-pooled states
  POST /offload           the weights move to host RAM; the device copy is freed
  POST /restore           the weights move back to the device
  POST /cleanup           garbage collection and the CUDA cache emptied

On a GPU machine the device is cuda (CUDA_VISIBLE_DEVICES, set by modelbufd,
picks which); elsewhere it is the CPU, where "offload" moves the parameters
into a separate host copy and frees the compute copy, so the memory really
moves between the two.
"""
import argparse
import gc
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--dim", type=int, default=512)
p.add_argument("--layers", type=int, default=8)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--seed", type=int, default=1234)
p.add_argument("--device", default="auto", help="auto, cpu or cuda")
a = p.parse_args()

DEVICE = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                      else ("cpu" if a.device == "auto" else a.device))
VOCAB, CTX = 256, 256
torch.set_num_threads(max(1, torch.get_num_threads() // 2))


class TinyLM(nn.Module):
    def __init__(self, dim, layers, heads):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(CTX, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)

    def hidden(self, ids):
        n = ids.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), diagonal=1)
        x = self.embed(ids) + self.pos(torch.arange(n, device=ids.device))
        return self.norm(self.body(x, mask=mask))

    def forward(self, ids):
        return self.head(self.hidden(ids))


t0 = time.time()
torch.manual_seed(a.seed)
model = TinyLM(a.dim, a.layers, a.heads).eval()
model.to(DEVICE)
NPARAM = sum(p.numel() for p in model.parameters())
NBYTES = sum(p.numel() * p.element_size() for p in model.parameters())
print(f"torch_server: {NPARAM / 1e6:.1f}M parameters ({NBYTES / 2**20:.0f} MiB) on {DEVICE} "
      f"in {time.time() - t0:.2f}s, port {a.port}", flush=True)

lock = threading.Lock()
state = {"location": "device", "host": None}


def offload():
    """Weights to host RAM, the device copy freed."""
    if state["location"] == "host":
        return
    host = {}
    for name, prm in model.named_parameters():
        host[name] = prm.detach().to("cpu", copy=True)
        prm.data = torch.empty(0, device=prm.device, dtype=prm.dtype)
    state["host"], state["location"] = host, "host"
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def restore():
    if state["location"] == "device":
        return
    for name, prm in model.named_parameters():
        prm.data = state["host"][name].to(DEVICE, copy=DEVICE.type != "cpu")
    state["host"], state["location"] = None, "device"
    gc.collect()


def ids_of(text):
    data = text.encode("utf-8", errors="replace")[-(CTX - 64):] or b" "
    return torch.tensor([list(data)], dtype=torch.long, device=DEVICE)


@torch.no_grad()
def generate(text, max_tokens):
    ids = ids_of(text)
    out = []
    for _ in range(max(0, min(max_tokens, 64))):
        nxt = model(ids[:, -CTX:])[0, -1].argmax().item()
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=DEVICE)], dim=1)
    return bytes(out).decode("utf-8", errors="replace")


@torch.no_grad()
def embed(text):
    return model.hidden(ids_of(text))[0].mean(dim=0).float().cpu().tolist()


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok", "location": state["location"],
                                    "device": str(DEVICE), "parameters": NPARAM,
                                    "bytes": NBYTES})
        return self.reply(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self):
        req = self.body()
        if req is None:
            return self.reply(400, {"error": {"code": "bad_request", "message": "malformed JSON"}})
        with lock:
            if self.path == "/offload":
                offload()
                return self.reply(200, {"location": state["location"]})
            if self.path == "/restore":
                restore()
                return self.reply(200, {"location": state["location"]})
            if self.path == "/cleanup":
                gc.collect()
                if DEVICE.type == "cuda":
                    torch.cuda.empty_cache()
                return self.reply(200, {"status": "ok"})
            if state["location"] != "device":
                return self.reply(409, {"error": {"code": "offloaded",
                                                  "message": "weights are in host RAM"}})
            if self.path == "/infer":
                t = time.time()
                text = generate(str(req.get("input", "")), int(req.get("max_tokens", 16)))
                return self.reply(200, {"output": text, "ms": (time.time() - t) * 1000})
            if self.path == "/v1/completions":
                text = generate(str(req.get("prompt", "")), int(req.get("max_tokens", 16)))
                return self.reply(200, {"object": "text_completion", "model": req.get("model"),
                                        "choices": [{"index": 0, "text": text,
                                                     "finish_reason": "length"}]})
            if self.path == "/v1/embeddings":
                inp = req.get("input", "")
                texts = [inp] if isinstance(inp, str) else [str(x) for x in inp]
                data = [{"object": "embedding", "index": i, "embedding": embed(t)}
                        for i, t in enumerate(texts)]
                return self.reply(200, {"object": "list", "data": data, "model": req.get("model")})
        return self.reply(404, {"error": {"code": "not_found", "message": self.path}})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", a.port), H).serve_forever()
