#!/bin/sh
# run.sh BUILD - `make run`: start modelbufd with examples/modelbuf.yaml in
# the foreground and say how to call it. Ctrl-C stops it and every worker.
set -eu
build=${1:-build}
listen=${MODELBUF_LISTEN:-127.0.0.1:8686}
url="http://$listen"
# The weights of the example's tensors model: a synthetic file, made once.
weights=${MODELBUF_EXAMPLE_WEIGHTS:-$build/example-weights.safetensors}
if [ ! -e "$weights" ]; then
  "$build/cli/modelbuf" mkmodel --format safetensors --size 64MiB "$weights" >/dev/null
fi
export MODELBUF_EXAMPLE_WEIGHTS="$weights"
cat <<MSG
modelbufd is starting on $url with examples/modelbuf.yaml (Ctrl-C stops it).
Its dashboard: $url/ (docs/DASHBOARD.md). In another terminal:

  curl -s $url/health
  curl -s $url/api/models                                  # every model, state unloaded
  curl -s -X POST $url/m/echo/infer -d '{"input": "hello"}'   # cold load, then proxied
  curl -sN "$url/m/echo/stream?n=5"                        # a token stream, chunk by chunk
  curl -s $url/v1/models                                   # the models that speak OpenAI
  curl -s -X POST $url/api/models/echo/offload             # to host RAM (hooks)
  curl -sN $url/api/events                                 # every state change, live
  curl -s $url/metrics | grep modelbuf_model_state
  curl -s $url/v1/chat/completions -d '{"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'   # PyTorch, cold load
  curl -sN $url/v1/chat/completions -d '{"model": "modelbuf/tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
  curl -s $url/v1/completions -d '{"model": "tiny-gpt", "prompt": "hello", "max_tokens": 8}'
  PYTHONPATH=python /usr/bin/python3 -c 'import modelbuf; print(modelbuf.Client("$url").model("torch").status()["state"])'
  curl -s -X POST $url/api/models/torch/offload            # its weights to host RAM; the next request restores
  curl -s $url/m/weights/tensors                           # tensors kept in memory by the daemon itself
  curl -s $url/m/weights/tensors/model.norm.weight | od -A d -t f4 | head -3   # a tensor's bytes

Logs below are one logfmt line per event.
MSG
exec "$build/daemon/modelbufd" --config examples/modelbuf.yaml --listen "$listen"
