"""GGUF in and out: round trips, zero-copy tensors, and clear errors for bad files (in child processes)."""
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

import graphcore as gc
from graphcore.gguf_io import GGUFError, gguf_read, gguf_write

VT = gguf.GGUFValueType


def _sample_file(path):
    rng = np.random.default_rng(0)
    tensors = {"w32": rng.standard_normal((3, 5, 7)).astype(np.float32),
               "w16": rng.standard_normal((4, 6)).astype(np.float16),
               "ids": np.arange(-5, 6, dtype=np.int32)}
    meta = {"general.architecture": "test", "n": 7, "neg": -3, "big": 2 ** 40, "x": 0.25, "flag": False,
            "name": "zürich", "floats": np.array([1.5, -2.0], np.float32), "words": ["a", "bé", ""],
            "explicit": (9, VT.UINT64)}
    gguf_write(path, meta, tensors)
    return meta, tensors


def test_round_trip_metadata_and_tensors(tmp_path):
    p = tmp_path / "a.gguf"
    meta, tensors = _sample_file(p)
    f = gguf_read(p)
    assert f.metadata["general.architecture"] == "test"
    assert f.metadata["n"] == 7 and f.types["n"] == VT.UINT32
    assert f.metadata["neg"] == -3 and f.types["neg"] == VT.INT32
    assert f.metadata["big"] == 2 ** 40
    assert f.metadata["x"] == 0.25 and f.metadata["flag"] is False and f.metadata["name"] == "zürich"
    assert f.metadata["floats"] == [1.5, -2.0] and f.metadata["words"] == ["a", "bé", ""]
    assert f.metadata["explicit"] == 9 and f.types["explicit"] == VT.UINT64
    assert list(f.tensors) == ["w32", "w16", "ids"]
    for name, a in tensors.items():
        t = f.tensors[name]
        assert t.type == {np.float32: gc.TYPE_F32, np.float16: gc.TYPE_F16, np.int32: gc.TYPE_I32}[a.dtype.type]
        assert t.ne[:a.ndim] == list(a.shape[::-1])
        np.testing.assert_array_equal(t.numpy(), a)
    # the typed getter
    assert f.get("x", kind=float) == 0.25 and f.get("n", kind=float) == 7.0
    with pytest.raises(GGUFError, match="'name' is str"):
        f.get("name", kind=int)
    with pytest.raises(GGUFError, match="'nothing' is missing"):
        f.get("nothing", required=True)
    with pytest.raises(GGUFError, match=r"tensor 'w16' has shape \[6, 4\], expected \[4, 6\]"):
        f.tensor("w16", [4, 6])


def test_tensors_are_zero_copy_views_of_the_file_and_compute(tmp_path):
    p = tmp_path / "a.gguf"
    _, tensors = _sample_file(p)
    f = gguf_read(p)
    t = f.tensors["w32"]
    raw = np.fromfile(p, dtype=np.uint8)
    off = t._offs
    np.testing.assert_array_equal(raw[off:off + gc.nbytes(t)].view(np.float32).reshape(3, 5, 7), tensors["w32"])
    assert np.shares_memory(t.numpy(), f.ctx.arena)             # the mapped file, not a copy
    # writing changes the private copy only (copy-on-write map), never the file
    t.numpy()[0, 0, 0] = 123.0
    assert np.fromfile(p, dtype=np.uint8)[off:off + 4].view(np.float32)[0] == tensors["w32"][0, 0, 0]
    # the mapped tensors are ordinary graph inputs
    with gc.init(1 << 20) as ctx:
        y = gc.mul_mat(ctx, f.tensors["w16"], gc.from_numpy(ctx, np.ones((2, 6), np.float32)))
        gf = gc.new_graph(ctx)
        gc.build_forward_expand(gf, y)
        gc.graph_compute_with_ctx(ctx, gf, 2)
        np.testing.assert_allclose(y.numpy(), np.ones((2, 6)) @ tensors["w16"].astype(np.float32).T, rtol=1e-5)


def test_write_from_graphcore_tensors(tmp_path):
    with gc.init(1 << 16) as ctx:
        a = gc.from_numpy(ctx, np.arange(6, dtype=np.float32).reshape(2, 3))
        gguf_write(tmp_path / "b.gguf", {"general.architecture": "t"}, {"a": a})
    np.testing.assert_array_equal(gguf_read(tmp_path / "b.gguf").tensors["a"].numpy(), np.arange(6).reshape(2, 3))


def test_write_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(GGUFError, match="general.architecture"):
        gguf_write(tmp_path / "c.gguf", {}, {})
    with pytest.raises(GGUFError, match="tensor 'd' has dtype float64"):
        gguf_write(tmp_path / "c.gguf", {"general.architecture": "t"}, {"d": np.zeros(3)})
    with pytest.raises(GGUFError, match="key 'o': cannot store a object"):
        gguf_write(tmp_path / "c.gguf", {"general.architecture": "t", "o": object()}, {})


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    p = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((2, 66), np.uint8),     # 2 rows of one 256-block
                 raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"tensor 'blk.0.attn_q.weight' has type IQ2_XXS.*supported: F32, F16, I32, Q4_0 ... Q8_K"):
        gguf_read(p)
    f = gguf_read(p, skip_unsupported=True)           # for listing a file (graphcore-llama info)
    assert f.tensors == {} and f.skipped == {"blk.0.attn_q.weight": ("IQ2_XXS", [256, 2])}


CHILD = textwrap.dedent("""
    import sys
    from graphcore.gguf_io import GGUFError, gguf_read
    try:
        gguf_read(sys.argv[1])
    except GGUFError as e:
        print("GGUFError:", e)
    else:
        print("read")
""")


def _read_in_child(path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]          # never a crash, never a traceback
    return r.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "bad_magic", "header_only", "truncated_metadata",
                                  "truncated_data", "huge_counts", "garbage"])
def test_bad_files_raise_clear_errors(tmp_path, case):
    good = tmp_path / "good.gguf"
    _sample_file(good)
    data = good.read_bytes()
    p = tmp_path / f"{case}.gguf"
    if case != "missing":
        p.write_bytes({
            "empty": b"",
            "bad_magic": b"GGML" + data[4:],
            "header_only": data[:24],
            "truncated_metadata": data[:120],
            "truncated_data": data[:-100],
            "huge_counts": data[:8] + (2 ** 62).to_bytes(8, "little") + (2 ** 62).to_bytes(8, "little") + data[24:],
            "garbage": data[:4] + bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)),
        }[case])
    out = _read_in_child(p)
    assert out.startswith("GGUFError:") and str(p) in out, out
    expect = {"missing": "no such file", "empty": "not a GGUF file", "bad_magic": "magic b'GGML'",
              "truncated_data": "truncated"}.get(case, "")
    assert expect in out, out
