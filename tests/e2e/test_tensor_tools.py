"""The weight-file tools end to end: `modelbuf mkmodel`, `modelbuf inspect`
and `modelbuf bench load|offload|restore`, on real files on disk."""
import json
import os
import struct
import subprocess
import tempfile

import pytest

BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
TOOL = os.path.join(BUILD, "cli", "modelbuf")
SANITIZED = os.environ.get("MB_SANITIZE", "none") not in ("", "none")


def tool(*args, timeout=120):
    return subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir():
    # On disk (not tmpfs) so that direct I/O and the page cache are real.
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield d


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_mkmodel_and_inspect(workdir, fmt):
    path = os.path.join(workdir, "m." + fmt)
    p = tool("mkmodel", "--format", fmt, "--size", "4MiB", "--tensors", "12", path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(tool("inspect", "--json", path).stdout)
    assert doc["format"] == fmt and doc["file_bytes"] == os.path.getsize(path)
    assert doc["tensor_count"] == len(doc["tensors"]) >= 2
    # The tensors tile the data section: sizes add up, no overlaps.
    spans = sorted((t["offset"], t["offset"] + t["bytes"]) for t in doc["tensors"])
    assert sum(b - a for a, b in spans) == doc["data_bytes"]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    assert spans[-1][1] <= doc["file_bytes"]
    assert 3.5 * 2**20 <= doc["data_bytes"] <= 4.5 * 2**20
    if fmt == "safetensors":  # the header as the file says
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        names = {k for k in header if k != "__metadata__"}
        assert names == {t["name"] for t in doc["tensors"]}
    text = tool("inspect", path)
    assert text.returncode == 0 and doc["tensors"][0]["name"] in text.stdout


def test_inspect_rejects_a_truncated_file(workdir):
    good = os.path.join(workdir, "cut.gguf")
    assert tool("mkmodel", "--format", "gguf", "--size", "1MiB", good).returncode == 0
    bad = os.path.join(workdir, "cut-100.gguf")
    with open(good, "rb") as f, open(bad, "wb") as g:
        g.write(f.read(100))
    p = tool("inspect", bad)
    assert p.returncode != 0
    assert bad in p.stderr and "100-byte file" in p.stderr, p.stderr


def bench(kind, path, *args):
    p = tool("bench", kind, path, "--cycles", "1", "--json", *args,
             timeout=600 if SANITIZED else 120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def test_bench_load_offload_restore(workdir):
    path = os.path.join(workdir, "b.safetensors")
    assert tool("mkmodel", "--format", "safetensors", "--size", "16MiB", path).returncode == 0
    r, _ = bench("load", path)
    assert r["bench"] == "load" and r["device"] == "host" and r["cycles"] == 1
    g = r["gbps"]
    for k in ("direct_read", "buffered_read", "memcpy_h2d", "memcpy_d2h", "naive_load",
              "load_cold", "load_warm", "offload", "restore"):
        assert g[k] > 0, k
    q = r["ratios"]
    # Ratios and figures are printed with 3 decimals: compare within that
    # (figures of a few hundredths of a GB/s under a sanitizer: 5 %).
    assert q["load_cold_vs_direct"] == pytest.approx(g["load_cold"] / g["direct_read"],
                                                     rel=0.05, abs=0.002)
    assert q["load_warm_vs_buffered"] == pytest.approx(g["load_warm"] / g["buffered_read"],
                                                       rel=0.05, abs=0.002)
    # On the host device the warm load's target baseline is the buffered
    # read (on a GPU: the smaller of it and the host->device copy).
    assert q["load_warm_vs_target"] == pytest.approx(q["load_warm_vs_buffered"], abs=0.002)
    # The headline ratio of `load` is the worse of its two.
    assert r["ratio"] == pytest.approx(min(q["load_cold_vs_direct"], q["load_warm_vs_target"]),
                                       abs=0.002)
    assert r["extra_gbps"]["buffered_read_cached_dest"] > 0
    x = r["extra_gbps"]["direct_read_cached_dest"]
    assert x > 0
    assert q["load_cold_vs_direct_cached_dest"] == pytest.approx(g["load_cold"] / x,
                                                                 rel=0.05, abs=0.002)
    o, _ = bench("offload", path)
    assert o["ratio"] == pytest.approx(o["ratios"]["offload_vs_memcpy"], abs=0.002)
    s, _ = bench("restore", path)
    assert s["ratio"] == pytest.approx(s["ratios"]["restore_vs_memcpy"], abs=0.002)


def test_bench_cuda_without_a_driver_measures_the_host(workdir):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU driver")
    path = os.path.join(workdir, "c.gguf")
    assert tool("mkmodel", "--format", "gguf", "--size", "2MiB", path).returncode == 0
    r, err = bench("load", path, "--device", "cuda:0")
    assert r["device"] == "host"
    assert err.count("using the host device") == 1, err


def test_bench_bad_input(workdir):
    assert tool("bench", "load").returncode == 2
    assert tool("bench", "load", "x", "--device", "tpu:0").returncode == 2
    assert tool("bench", "load", "x", "--cycles", "0").returncode == 2
    p = tool("bench", "load", os.path.join(workdir, "missing.safetensors"))
    assert p.returncode == 1 and "missing.safetensors" in p.stderr, p.stderr


def write_shard(path, tensors):
    """A safetensors file of F32 tensors {name: [rows, cols]} (random bytes)."""
    header, off = {}, 0
    for name, (r, c) in tensors.items():
        header[name] = {"dtype": "F32", "shape": [r, c], "data_offsets": [off, off + r * c * 4]}
        off += r * c * 4
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + os.urandom(off))


def test_a_sharded_model_folder(workdir):
    """inspect and bench take a model's folder (its index's shards), its
    index, or a pattern; a folder without weight files is an error."""
    folder = os.path.join(workdir, "sharded")
    os.makedirs(folder)
    weight_map = {}
    for k in range(3):
        name = f"model-{k + 1:05d}-of-00003.safetensors"
        tensors = {f"layer{k}.{j}": (256, 512) for j in range(4)}
        write_shard(os.path.join(folder, name), tensors)
        weight_map.update({t: name for t in tensors})
    write_shard(os.path.join(folder, "consolidated.safetensors"), {"x": (8, 8)})
    index = os.path.join(folder, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"weight_map": weight_map}, f)
    for spec in (folder, index, os.path.join(folder, "model-*.safetensors")):
        doc = json.loads(tool("inspect", "--json", spec).stdout)
        assert [os.path.basename(f["file"]) for f in doc["files"]] == sorted(set(weight_map.values()))
        assert doc["tensor_count"] == 12 and doc["total_bytes"] == 12 * 256 * 512 * 4
    text = tool("inspect", folder)
    assert text.returncode == 0
    assert "model: 3 files, 12 tensors, 6291456 bytes (6.00 MiB)" in text.stdout
    assert "consolidated" not in text.stdout
    r, _ = bench("load", folder)
    assert r["files"] == 3 and r["bytes"] == 12 * 256 * 512 * 4
    assert r["gbps"]["load_cold"] > 0 and r["gbps"]["naive_load"] > 0
    empty = os.path.join(workdir, "empty-model")
    os.makedirs(empty)
    for args in (("inspect", empty), ("bench", "load", empty, "--cycles", "1")):
        p = tool(*args)
        assert p.returncode == 1 and "no .safetensors or .gguf file" in p.stderr, p.stderr
