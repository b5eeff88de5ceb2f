"""modelbufd end to end with backend: tensors: weight files written by
`modelbuf mkmodel`, loaded by the library's tensor engine inside the real
daemon, served over HTTP on loopback. Listing and fetching tensors (every
byte compared with the file, found through the file's own header), Range,
errors before any load, offload / restore / unload with the memory figures,
eviction under a budget, broken and truncated files, and SIGHUP."""
import atexit
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import BUILD, SLOW, Daemon  # noqa: E402
from test_reload import hup, write  # noqa: E402

CLI = os.path.join(BUILD, "cli", "modelbuf")
DATA = tempfile.mkdtemp(prefix="mb-tensors-e2e-")
atexit.register(shutil.rmtree, DATA, True)


def mkmodel(name, fmt, size, seed=0):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        subprocess.run([CLI, "mkmodel", "--format", fmt, "--size", size, "--seed", str(seed),
                        path], check=True, capture_output=True)
    return path


def safetensors_index(path):
    """name -> (dtype, shape, absolute offset, bytes), from the file's header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], 8 + n + a, b - a)
    return out


def gguf_index(path):
    """The same for a GGUF file, from `modelbuf inspect --json`."""
    doc = json.loads(subprocess.run([CLI, "inspect", "--json", path], check=True,
                                    capture_output=True, text=True).stdout)
    return {t["name"]: (t["dtype"], t["shape"], t["offset"], t["bytes"]) for t in doc["tensors"]}


def file_bytes(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def raw(d, method, path, headers=None):
    """(status, headers, body bytes) of a request, the body kept as bytes."""
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60 * SLOW)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def tensor_url(model, name):
    return f"/m/{model}/tensors/" + urllib.parse.quote(name, safe="")


def tensors_model(name, *files, extra=""):
    return (f"  {name}:\n    backend: tensors\n    files: [{', '.join(files)}]\n" + extra)


def test_list_and_fetch_every_tensor():
    st = mkmodel("list.safetensors", "safetensors", "3MiB", seed=1)
    gg = mkmodel("list.gguf", "gguf", "2MiB", seed=2)
    d = Daemon("devices: [{host: true, budget: 256MiB}]\nmodels:\n" +
               tensors_model("w", st, gg, extra="    loader: {chunk_size: 64KiB, threads: 3}\n"))
    try:
        # Routes and methods are checked before any load.
        code, doc, _ = d.get("/m/w/nothing/here")
        assert code == 404 and doc["error"]["code"] == "not_found"
        assert "/m/w/tensors" in doc["error"]["message"]
        assert "/m/w/tensors/{tensor}" in doc["error"]["message"]
        code, doc, hdrs = d.post("/m/w/tensors")
        assert code == 405 and doc["error"]["code"] == "method_not_allowed"
        assert hdrs.get("Allow") == "GET, HEAD"
        code, doc, _ = d.request("DELETE", "/m/w/tensors/model.norm.weight")
        assert code == 405
        code, doc, _ = d.get("/m/w/tensors/no.such.tensor")
        assert code == 404 and "no.such.tensor" in doc["error"]["message"]
        assert d.status("w")["state"] == "unloaded"
        assert d.status("w")["stats"]["loads"] == 0

        # The list loads the model under a lease.
        code, doc, hdrs = d.get("/m/w/tensors")
        assert code == 200, doc
        assert "X-Modelbuf-Load-Ms" in hdrs
        index = {**{k: (*v, st) for k, v in safetensors_index(st).items()},
                 **{k: (*v, gg) for k, v in gguf_index(gg).items()}}
        assert doc["model"] == "w" and doc["count"] == len(index) == len(doc["tensors"])
        assert [f["path"] for f in doc["files"]] == [st, gg]
        assert [f["format"] for f in doc["files"]] == ["safetensors", "gguf"]
        for t in doc["tensors"]:
            dtype, shape, offset, nbytes, path = index[t["name"]]
            assert (t["dtype"], t["shape"], t["bytes"], t["file"], t["offset"]) == \
                (dtype, shape, nbytes, path, offset)
        assert doc["bytes"] == sum(v[3] for v in index.values())
        status = d.status("w")
        assert status["state"] == "ready" and status["backend"] == "tensors"
        assert status["vram_bytes"] == doc["arena_bytes"] >= doc["bytes"]
        assert status["host_bytes"] == 0

        # Every tensor's bytes, read from the device, equal the file's.
        for name, (dtype, shape, offset, nbytes, path) in index.items():
            code, h, body = raw(d, "GET", tensor_url("w", name))
            assert code == 200, body[:200]
            assert h["content-type"] == "application/octet-stream"
            assert h["x-modelbuf-tensor-dtype"] == dtype
            assert json.loads(h["x-modelbuf-tensor-shape"]) == shape
            assert int(h["content-length"]) == nbytes
            assert body == file_bytes(path, offset, nbytes), name

        # HEAD and Range.
        big = max(index, key=lambda k: index[k][3])
        _, _, off, nbytes, path = index[big]
        code, h, body = raw(d, "HEAD", tensor_url("w", big))
        assert code == 200 and body == b"" and int(h["content-length"]) == nbytes
        code, h, body = raw(d, "GET", tensor_url("w", big), {"Range": "bytes=100-4195"})
        assert code == 206 and h["content-range"] == f"bytes 100-4195/{nbytes}"
        assert body == file_bytes(path, off + 100, 4096)
        code, h, body = raw(d, "GET", tensor_url("w", big), {"Range": "bytes=-10"})
        assert code == 206 and body == file_bytes(path, off + nbytes - 10, 10)
        code, h, body = raw(d, "GET", tensor_url("w", big), {"Range": f"bytes={nbytes}-"})
        assert code == 416 and h["content-range"] == f"bytes */{nbytes}"
        # An unknown tensor of a loaded model: 404 JSON.
        code, doc, _ = d.get(tensor_url("w", "nope"))
        assert code == 404 and doc["error"]["code"] == "not_found"
        assert d.status("w")["stats"]["loads"] == 1
    finally:
        assert d.stop() == 0


def test_offload_restore_unload():
    st = mkmodel("cycle.safetensors", "safetensors", "4MiB", seed=3)
    index = safetensors_index(st)
    name = max(index, key=lambda k: index[k][3])
    _, _, offset, nbytes, = index[name]
    want = file_bytes(st, offset, nbytes)
    d = Daemon("devices: [{host: true, budget: 256MiB}]\n"
               "defaults: {keep_alive: 10m, host_keep_alive: 10m}\nmodels:\n" +
               tensors_model("w", st))
    try:
        code, s, _ = d.post("/api/models/w/load")
        assert code == 200 and s["state"] == "ready", s
        arena = s["vram_bytes"]
        assert arena >= nbytes and s["host_bytes"] == 0
        code, _, body = raw(d, "GET", tensor_url("w", name))
        assert code == 200 and body == want

        code, s, _ = d.post("/api/models/w/offload")
        assert code == 200, s
        s = d.wait_state("w", ["offloaded"])
        assert s["location"] == "cpu" and s["vram_bytes"] == 0 and s["host_bytes"] == arena
        assert s["stats"]["offloads"] == 1

        # The next request restores it from host RAM: same bytes.
        code, h, body = raw(d, "GET", tensor_url("w", name))
        assert code == 200 and body == want
        s = d.status("w")
        assert s["state"] == "ready" and s["stats"]["restores"] == 1
        assert s["stats"]["loads"] == 1
        assert s["vram_bytes"] == arena

        code, s, _ = d.post("/api/models/w/unload")
        assert code == 200, s
        s = d.wait_state("w", ["unloaded"])
        assert s["vram_bytes"] == 0 and s["host_bytes"] == 0 and s["location"] == "none"
        # And loads again from the file.
        code, _, body = raw(d, "GET", tensor_url("w", name))
        assert code == 200 and body == want
        assert d.status("w")["stats"]["loads"] == 2
    finally:
        assert d.stop() == 0


def test_second_model_evicts_the_first():
    a = mkmodel("evict-a.safetensors", "safetensors", "8MiB", seed=4)
    b = mkmodel("evict-b.gguf", "gguf", "8MiB", seed=5)
    d = Daemon("devices: [{host: true, budget: 12MiB}]\n"
               "defaults: {keep_alive: 10m, offload: false}\nmodels:\n" +
               tensors_model("a", a) + tensors_model("b", b))
    try:
        code, doc, _ = d.get("/m/a/tensors")
        assert code == 200
        assert d.status("a")["state"] == "ready"
        code, doc, _ = d.get("/m/b/tensors")
        assert code == 200
        sa = d.wait_state("a", ["unloaded", "offloaded"])
        assert sa["stats"]["evictions"] == 1 and sa["vram_bytes"] == 0
        sb = d.status("b")
        assert sb["state"] == "ready" and sb["vram_bytes"] >= 8 << 20
        # a comes back, evicting b.
        index = safetensors_index(a)
        name = next(iter(index))
        code, _, body = raw(d, "GET", tensor_url("a", name))
        assert code == 200 and body == file_bytes(a, index[name][2], index[name][3])
        assert d.wait_state("b", ["unloaded", "offloaded"])["stats"]["evictions"] == 1
    finally:
        assert d.stop() == 0


def test_broken_and_truncated_files():
    good = mkmodel("good.gguf", "gguf", "1MiB", seed=6)
    bad = os.path.join(DATA, "bad.safetensors")
    with open(bad, "wb") as f:  # a header length far past the end of the file
        f.write(struct.pack("<Q", 1 << 40) + b"{}" * 64)
    trunc = os.path.join(DATA, "trunc.safetensors")
    shutil.copyfile(mkmodel("trunc-src.safetensors", "safetensors", "2MiB", seed=7), trunc)
    keep = open(trunc, "rb").read()
    d = Daemon("devices: [{host: true, budget: 256MiB}]\nmodels:\n" +
               tensors_model("good", good) + tensors_model("bad", bad) +
               tensors_model("trunc", trunc))
    try:
        # A malformed file does not stop the daemon: the start logs it ...
        assert "weight file not usable" in d.logs() and bad in d.logs()
        # (and --check-config warns of it, still valid)
        r = subprocess.run([os.path.join(BUILD, "daemon", "modelbufd"), "--check-config", d.cfg],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("ok: 3 models")
        assert f"models.bad.files: {bad}: header length" in r.stderr
        assert "models.good" not in r.stderr
        # ... and every load fails with the file and the fault.
        code, doc, _ = d.get("/m/bad/tensors")
        assert code == 502 and doc["error"]["code"] == "load_failed", doc
        assert bad in doc["error"]["message"]
        s = d.status("bad")
        assert s["state"] == "failed" and bad in s["error"]
        assert s["stats"]["load_failures"] == 1
        code, doc, _ = d.get("/m/good/tensors")
        assert code == 200 and doc["count"] > 0

        # A file cut short after the start: the load fails, naming it.
        with open(trunc, "r+b") as f:
            f.truncate(len(keep) // 2)
        code, doc, _ = d.get("/m/trunc/tensors")
        assert code == 502 and trunc in doc["error"]["message"], doc
        s = d.status("trunc")
        assert s["state"] == "failed" and trunc in s["error"] and s["vram_bytes"] == 0
        # Within the back-off a request fails at once, with the same reason.
        code, doc, _ = d.get("/m/trunc/tensors")
        assert code == 502 and trunc in doc["error"]["message"]
        # Repaired, the file is read again at the next try.
        with open(trunc, "wb") as f:
            f.write(keep)
        deadline = time.time() + 20 * SLOW
        while True:
            code, doc, _ = d.get("/m/trunc/tensors")
            if code == 200 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert code == 200, doc
        assert d.status("trunc")["state"] == "ready"
        # The others went on serving all along.
        assert d.get("/m/good/tensors")[0] == 200
        assert d.get("/health")[0] == 200
    finally:
        assert d.stop() == 0


def test_sighup_keeps_an_unchanged_tensors_model_loaded():
    a = mkmodel("hup-a.safetensors", "safetensors", "2MiB", seed=8)
    b = mkmodel("hup-b.gguf", "gguf", "1MiB", seed=9)
    models = tensors_model("a", a, extra="    keep_alive: 10m\n")
    d = Daemon("models:\n" + models)
    try:
        assert d.get("/m/a/tensors")[0] == 200
        before = d.status("a")
        assert before["state"] == "ready"
        write(d, models + tensors_model("b", b))
        hup(d, 1)
        assert "added=1" in d.logs(), d.logs()
        after = d.status("a")
        assert after["state"] == "ready" and after["loaded_at"] == before["loaded_at"]
        assert after["stats"]["loads"] == 1
        assert d.get("/m/b/tensors")[0] == 200
        # Other loader knobs are a changed model: it is added again (unloaded).
        write(d, tensors_model("a", a, extra="    loader: {threads: 1}\n") + tensors_model("b", b))
        hup(d, 2)
        assert "changed=1" in d.logs(), d.logs()
        assert d.status("a")["state"] == "unloaded"
        assert d.status("b")["state"] == "ready"
        assert d.get("/m/a/tensors")[0] == 200
    finally:
        assert d.stop() == 0


def test_config_errors_for_tensors_models():
    cfg = os.path.join(DATA, "bad.yaml")
    with open(cfg, "w") as f:
        f.write("models:\n"
                "  a: {backend: tensors, files: []}\n"
                "  b: {backend: tensors, files: [/x.gguf], loader: {io: fast, threads: 0}}\n"
                "  c: {cmd: [/bin/true], loader: {threads: 2}}\n")
    r = subprocess.run([os.path.join(BUILD, "daemon", "modelbufd"), "--check-config", cfg],
                       capture_output=True, text=True)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "models.a: files is empty" in out
    assert "unknown io mode 'fast'" in out
    assert "models.b.loader.threads" in out
    assert "models.c: loader is only for backend tensors" in out


def write_shard(path, tensors, seed):
    """A safetensors file of F32 tensors {name: [rows, cols]}, contents from seed."""
    header, blobs, off = {}, [], 0
    for i, (name, shape) in enumerate(tensors.items()):
        n = shape[0] * shape[1] * 4
        blobs.append(bytes((seed * 31 + i * 7 + k) % 251 for k in range(n)))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_hugging_face_snapshot_folder():
    """files: [FOLDER] takes the shards its model.safetensors.index.json
    names (not a stray consolidated file beside them), follows symbolic
    links as the Hugging Face cache has them, lists them in the status, and
    picks up a changed set of shards at the next cold load; a pattern and
    a broken index fail only that model's loads, with the fault."""
    snap = os.path.join(DATA, "snapshot")
    blobs = os.path.join(DATA, "blobs")
    os.makedirs(snap)
    os.makedirs(blobs)
    shards = {"model-00001-of-00002.safetensors": {"a.0": [16, 64], "a.1": [8, 64]},
              "model-00002-of-00002.safetensors": {"b.0": [32, 64]}}
    for i, (name, tensors) in enumerate(shards.items()):
        write_shard(os.path.join(blobs, str(i)), tensors, seed=i + 1)
        os.symlink(os.path.join(blobs, str(i)), os.path.join(snap, name))
    write_shard(os.path.join(snap, "consolidated.safetensors"), {"x.0": [4, 64]}, seed=9)
    weight_map = {t: f for f, ts in shards.items() for t in ts}
    with open(os.path.join(snap, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    pattern = os.path.join(snap, "model-*-of-00002.safetensors")
    broken = os.path.join(DATA, "broken-index")
    os.makedirs(broken)
    with open(os.path.join(broken, "model.safetensors.index.json"), "w") as f:
        f.write('{"weight_map": {"a.0": "../snapshot/model-00001-of-00002.safetensors"}}')
    d = Daemon("devices: [{host: true, budget: 256MiB}]\n"
               "defaults: {keep_alive: 10m}\nmodels:\n" +
               tensors_model("hf", snap) + tensors_model("glob", '"' + pattern + '"') +
               tensors_model("bad", broken))
    try:
        paths = [os.path.join(snap, n) for n in shards]
        assert d.status("hf")["files"] == paths
        assert d.status("glob")["files"] == paths
        code, doc, _ = d.get("/m/hf/tensors")
        assert code == 200, doc
        assert [f["path"] for f in doc["files"]] == paths
        assert sorted(t["name"] for t in doc["tensors"]) == ["a.0", "a.1", "b.0"]
        for path in paths:
            for name, (_, _, offset, nbytes) in safetensors_index(path).items():
                code, _, body = raw(d, "GET", tensor_url("hf", name))
                assert code == 200 and body == file_bytes(path, offset, nbytes), name
        assert d.get("/m/glob/tensors")[0] == 200
        # The broken index fails the model's loads, naming the fault.
        code, doc, _ = d.get("/m/bad/tensors")
        assert code == 502, doc
        assert "not a plain file name" in doc["error"]["message"], doc
        assert "model.safetensors.index.json" in doc["error"]["message"], doc
        # A third shard appears; the next cold load takes it.
        write_shard(os.path.join(snap, "model-00003-of-00003.safetensors"), {"c.0": [4, 64]}, 3)
        weight_map["c.0"] = "model-00003-of-00003.safetensors"
        with open(os.path.join(snap, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": weight_map}, f)
        assert d.post("/api/models/hf/unload")[0] == 200
        code, doc, _ = d.get("/m/hf/tensors")
        assert code == 200 and doc["count"] == 4, doc
        assert d.status("hf")["files"][-1].endswith("model-00003-of-00003.safetensors")
    finally:
        assert d.stop() == 0


def test_plugin_files_that_name_nothing_yet():
    """A plugin model whose files: pattern matches nothing does not stop the
    daemon: it warns, and the model's loads fail naming the entry."""
    plugin = os.path.join(BUILD, "examples", "plugins", "libmodelbuf_embed.so")
    pattern = os.path.join(DATA, "no-such-shards", "*.safetensors")
    d = Daemon(f"models:\n  emb: {{backend: plugin, plugin: {plugin}, files: [\"{pattern}\"]}}\n")
    try:
        assert "the pattern matches no file" in d.logs(), d.logs()
        code, doc, _ = d.post("/m/emb/embed", {"input": [1]})
        assert code == 502 and pattern in doc["error"]["message"], doc
    finally:
        assert d.stop() == 0
