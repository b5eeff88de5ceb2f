#!/usr/bin/python3
"""A PyTorch model API built with FastAPI and modelbuf.worker's helpers, for
the tests (or with --server stdlib, the same on http.server). A small
network with seeded weights; the helpers serve /health, /offload, /restore
and /cleanup, and this file adds:

  POST /infer      {"x": [float, ...]} -> {"y": [...]}, under worker.inference()
  GET  /tensors    {"location", "digests": {name: sha256 of its bytes},
                    "bytes": total, "memory": ...}: what the weights hold now

Run: fastapi_worker.py --port N [--server fastapi|stdlib] [--dim D]
"""
import argparse
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if os.environ.get("MODELBUF_PYTHON_PATH"):
    sys.path.insert(0, os.environ["MODELBUF_PYTHON_PATH"])  # the installed package
else:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "python"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from modelbuf.worker import Worker, read_json, send_json  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--server", choices=["fastapi", "stdlib"], default="fastapi")
p.add_argument("--dim", type=int, default=256)
a = p.parse_args()

torch.manual_seed(1)
model = nn.Sequential(nn.Linear(a.dim, a.dim), nn.ReLU(), nn.Linear(a.dim, a.dim),
                      nn.LayerNorm(a.dim)).eval()
head = nn.Linear(a.dim, 4)
head.register_buffer("scale", torch.full((4,), 0.5))  # a buffer moves too
worker = Worker("fastapi-test")
worker.register(model)
worker.register(head, "head")
cleanups = {"n": 0}


@worker.on_cleanup
def count_cleanup():
    cleanups["n"] += 1


def tensors():
    digests, total = {}, 0
    for mname, m in worker.modules.items():
        named = dict(m.named_parameters())
        named.update(dict(m.named_buffers()))
        for n, t in named.items():
            b = t.detach().cpu().contiguous().numpy().tobytes()
            digests[f"{mname}.{n}"] = hashlib.sha256(b).hexdigest()
            total += len(b)
    return {"location": worker.location, "digests": digests, "bytes": total,
            "memory": worker.memory(), "cleanups": cleanups["n"], "pid": os.getpid()}


def infer(doc):
    x = doc.get("x")
    if not isinstance(x, list) or len(x) != a.dim:
        raise ValueError(f"x must be a list of {a.dim} numbers")
    with worker.inference(), torch.no_grad():
        y = head(model(torch.tensor([x], dtype=torch.float32))) * head.scale
        return {"y": y[0].tolist()}


print(f"fastapi_worker ({a.server}) on port {a.port}", flush=True)
if a.server == "fastapi":
    from fastapi import FastAPI, HTTPException

    from modelbuf.worker import run_fastapi

    app = FastAPI()
    app.include_router(worker.router())

    @app.post("/infer")
    def infer_route(doc: dict):
        try:
            return infer(doc)
        except ValueError as e:
            raise HTTPException(400, str(e))

    @app.get("/tensors")
    def tensors_route():
        return tensors()

    run_fastapi(app, port=a.port)
else:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            if self.path == "/tensors":
                return send_json(self, 200, tensors())
            send_json(self, 404, {"error": "no route " + self.path})

        def do_POST(self):
            try:
                doc = read_json(self)
                if self.path == "/infer":
                    return send_json(self, 200, infer(doc))
                send_json(self, 404, {"error": "no route " + self.path})
            except ValueError as e:
                send_json(self, 400, {"error": str(e)})

    worker.serve(a.port, Handler)
