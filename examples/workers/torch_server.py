#!/usr/bin/python3
"""torch_server.py - a small PyTorch model API that modelbufd can manage,
built with modelbuf.worker's helpers (python/modelbuf/worker.py).

A byte-level transformer built in code (no downloads): the weights come from
a seeded generator, so two starts with the same options give the same
model. With the defaults (--dim 512 --layers 4) it holds about 13 million
parameters, 50 MiB in float32; --dim 1024 --layers 4 gives about 200 MiB.
Its text is what random weights say: the point is the lifecycle and the
API shapes, not the prose.

Routes (HTTP/1.1, JSON):
  GET  /health               200 {"status": "healthy", "location": "device"|"host",
                             "device": "cuda:0"|"cpu", "parameters": N, "bytes": B, ...}
  POST /v1/chat/completions  OpenAI: {"model", "messages", "max_tokens", "stream",
                             "stop", "stream_options": {"include_usage"}} -> a
                             chat.completion, or with "stream": true its
                             chat.completion.chunk events ending in data: [DONE]
  POST /v1/completions       OpenAI: {"model", "prompt", "max_tokens", "stream", "stop"}
                             -> a text_completion (or its chunks)
  POST /v1/embeddings        OpenAI: {"input": "text" | ["text", ...]} -> embeddings
  POST /infer                {"input": "text", "max_tokens": 16} -> {"output", "tokens"}
  POST /offload /restore /cleanup   modelbuf.worker.Worker: the weights to host
                             RAM (CUDA: .to("cpu") and empty_cache; without CUDA a
                             host copy, the "device" copy freed), back, and gc

While offloaded, the model's routes answer 503 {"error": "offloaded"} (the
daemon restores it before it forwards a request).

Options come from flags, or from TORCH_SERVER_<FLAG> environment variables
(e.g. TORCH_SERVER_DIM=1024). Runs under Debian's /usr/bin/python3 with the
python3-torch package; the modelbuf package is taken from the repository's
python/ folder when it is not installed.
"""
import argparse
import codecs
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from torch import nn

try:
    from modelbuf.worker import Offloaded, Worker, read_json, send_json, send_openai_stream
except ImportError:  # run from a checkout: the package next door
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "python"))
    from modelbuf.worker import Offloaded, Worker, read_json, send_json, send_openai_stream


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
VOCAB = 256  # bytes are the tokens
MAX_TOKENS = 256


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

# /health, /offload, /restore, /cleanup: the weights move as one module.
worker = Worker(a.model)
worker.register(model)


class BadRequest(ValueError):
    """A request OpenAI's API would refuse: 400 with its error shape."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


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
    with worker.inference(restore=False), torch.no_grad():
        ids, pad, ntok = encode(texts)
        h = model(ids, pad)
        keep = (~pad).unsqueeze(-1).float()
        v = (h * keep).sum(1) / keep.sum(1)
        v = nn.functional.normalize(v, dim=-1)
        return v.cpu().tolist(), ntok


def tokens(text, max_tokens):
    """The greedy continuation of text, byte by byte, as they are made (the
    worker is held meanwhile: no offload under a generation)."""
    with worker.inference(restore=False), torch.no_grad():
        ids = list(text.encode("utf-8"))[-(a.max_len - 1):] or [0]
        for _ in range(max_tokens):
            x = torch.tensor([ids[-a.max_len:]], dtype=torch.long, device=DEVICE)
            pad = torch.zeros_like(x, dtype=torch.bool)
            h = model(x, pad, causal=True)[0, -1]
            nxt = int(torch.argmax(h @ model.tok.weight.T))
            ids.append(nxt)
            yield nxt


def pieces(text, max_tokens, stops):
    """(piece of text, finish_reason) as generated: whole UTF-8 characters,
    cut at the first stop string (none of it is sent), then one last
    ("", "stop" | "length"). Returns the token count through .count."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    hold = max((len(s) for s in stops), default=1) - 1
    out, sent, n = "", 0, 0
    for tok in tokens(text, max_tokens):
        n += 1
        out += dec.decode(bytes([tok]))
        hits = [out.find(s) for s in stops if s in out]
        if hits:
            out = out[: min(hits)]
            if len(out) > sent:
                yield out[sent:], None, n
            yield "", "stop", n
            return
        safe = len(out) - hold
        if safe > sent:
            yield out[sent:safe], None, n
            sent = safe
    out += dec.decode(b"", final=True)
    if len(out) > sent:
        yield out[sent:], None, n
    yield "", "length", n


def max_tokens_of(doc):
    n = doc.get("max_completion_tokens", doc.get("max_tokens", 16))
    if n is None:
        n = 16
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOKENS:
        raise BadRequest(f"max_tokens must be an integer from 0 to {MAX_TOKENS}", "max_tokens")
    if doc.get("n", 1) not in (1, None):
        raise BadRequest("this model makes one choice (n: 1)", "n")
    return n


def stops_of(doc):
    stop = doc.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or \
            not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a string or a list of up to 4 non-empty strings", "stop")
    return stop


def chat_prompt(doc):
    msgs = doc.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", "messages")
    lines = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a role", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: their text
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest("a message's content must be a string or a list of parts",
                             "messages")
        lines.append(f"{m['role']}: {content}\n")
    return "".join(lines) + "assistant: "


def complete(kind, doc):
    """A chat.completion or text_completion, whole or as chunks (stream)."""
    if worker.location != "device":  # before a stream's head is sent
        raise Offloaded("offloaded")
    if kind == "chat":
        prompt = chat_prompt(doc)
    else:
        prompt = doc.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (or a list of one)", "prompt")
    n, stops = max_tokens_of(doc), stops_of(doc)
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    opts = doc.get("stream_options") or {}
    usage_too = isinstance(opts, dict) and opts.get("include_usage") is True
    cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    name = doc.get("model", a.model)
    ptok = len(prompt.encode("utf-8"))
    obj = "chat.completion" if kind == "chat" else "text_completion"

    def usage(ctok):
        return {"prompt_tokens": ptok, "completion_tokens": ctok,
                "total_tokens": ptok + ctok}

    if not stream:
        text, finish, ctok = "", "length", 0
        for piece, why, ctok in pieces(prompt, n, stops):
            text += piece
            finish = why or finish
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": None, "finish_reason": finish} if kind == "chat" else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        return {"id": cid, "object": obj, "created": created, "model": name,
                "system_fingerprint": None, "choices": [choice], "usage": usage(ctok)}

    def chunks():
        base = {"id": cid, "object": obj + ".chunk" if kind == "chat" else obj,
                "created": created, "model": name, "system_fingerprint": None}
        if kind == "chat":
            yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
        ctok = 0
        for piece, why, ctok in pieces(prompt, n, stops):
            if kind == "chat":
                delta = {"content": piece} if piece else {}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": why}
            else:
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": why}
            yield {**base, "choices": [choice]}
        if usage_too:
            yield {**base, "choices": [], "usage": usage(ctok)}
    return chunks()


def openai_error(handler, code, e):
    send_json(handler, code, {"error": {"message": str(e), "type": "invalid_request_error",
                                        "param": getattr(e, "param", None), "code": None}})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm the
    # body waits for the ACK of the headers, which the daemon's side delays
    # (up to 40 ms) on a reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        print("torch_server: " + fmt % args, flush=True)

    def do_GET(self):
        if self.path.split("?")[0] == "/health":
            code, doc = worker.health()
            doc.update({"device": str(DEVICE), "parameters": N_PARAMS, "bytes": N_BYTES})
            return send_json(self, code, doc)
        send_json(self, 404, {"error": "no route " + self.path})

    def do_POST(self):
        if worker.handle(self):  # /offload /restore /cleanup
            return
        path = self.path.split("?")[0]
        try:
            doc = read_json(self, required=False)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            return openai_error(self, 400, f"bad JSON body: {e}")
        try:
            if path in ("/v1/chat/completions", "/v1/completions"):
                out = complete("chat" if path == "/v1/chat/completions" else "text", doc)
                if isinstance(out, dict):
                    return send_json(self, 200, out)
                return send_openai_stream(self, out)
            if path == "/v1/embeddings":
                inp = doc.get("input")
                texts = [inp] if isinstance(inp, str) else inp
                if not isinstance(texts, list) or not texts or \
                        not all(isinstance(t, str) for t in texts):
                    raise BadRequest("input must be a string or a non-empty list of strings",
                                     "input")
                vecs, ntok = embed(texts)
                return send_json(self, 200, {
                    "object": "list", "model": doc.get("model", a.model),
                    "data": [{"object": "embedding", "index": i, "embedding": v}
                             for i, v in enumerate(vecs)],
                    "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})
            if path == "/infer":
                text = doc.get("input", "")
                n = doc.get("max_tokens", 16)
                if not isinstance(text, str) or isinstance(n, bool) or not isinstance(n, int) \
                        or not 0 <= n <= MAX_TOKENS:
                    raise BadRequest(f"input must be a string, max_tokens 0..{MAX_TOKENS}")
                out, ntok = "", 0
                for piece, _, ntok in pieces(text, n, []):
                    out += piece
                return send_json(self, 200, {"model": a.model, "output": out, "tokens": ntok,
                                             "device": str(DEVICE)})
        except BadRequest as e:
            return openai_error(self, 400, e)
        except Offloaded:
            return send_json(self, 503, {"error": "offloaded"})
        send_json(self, 404, {"error": "no route " + self.path})


server = ThreadingHTTPServer((a.host, a.port), Handler)
server.daemon_threads = True
print(f"torch_server {a.model}: listening on {a.host}:{a.port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
