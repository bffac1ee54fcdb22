"""ggml's own C, driven through ctypes from a llama.cpp build (4480542: `make libllama.so` in its
directory), for benchmarks that compare graphcore with ggml in the same run. Nothing of llama.cpp is
in this repository: the library is the user's build, found with --llama-cpp DIR.

Only the few public ggml.h functions a one-op graph needs are declared (signatures of 4480542).
"""
from __future__ import annotations

import ctypes as C
import os

import numpy as np


class _InitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


class _CPlan(C.Structure):
    _fields_ = [("work_size", C.c_size_t), ("work_data", C.c_void_p), ("n_threads", C.c_int),
                ("abort_callback", C.c_void_p), ("abort_callback_data", C.c_void_p)]


def load(llama_cpp_dir: str) -> C.CDLL:
    """ggml's functions from DIR/libllama.so (a clear error when it was not built)."""
    path = os.path.join(llama_cpp_dir, "libllama.so")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: build it with `make libllama.so` in {llama_cpp_dir}")
    lib = C.CDLL(path)
    P = C.c_void_p
    for name, res, args in (("ggml_init", P, [_InitParams]), ("ggml_free", None, [P]),
                            ("ggml_new_tensor_2d", P, [P, C.c_int, C.c_int64, C.c_int64]),
                            ("ggml_get_data", P, [P]), ("ggml_nbytes", C.c_size_t, [P]),
                            ("ggml_mul_mat", P, [P, P, P]), ("ggml_new_graph", P, [P]),
                            ("ggml_build_forward_expand", None, [P, P]),
                            ("ggml_graph_plan", _CPlan, [P, C.c_int]),
                            ("ggml_graph_compute", C.c_int, [P, C.POINTER(_CPlan)])):
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


class MulMat:
    """ggml_mul_mat(a, b) in a ggml context: a is `a_type` [K, M] with the row bytes (or float32 rows)
    `a_rows`, b float32 [K, N]; call run() to compute, result() for the float32 [N, M] output."""

    def __init__(self, lib, a_type: int, a_rows: np.ndarray, b: np.ndarray, n_threads: int):
        self.lib = lib
        M, N, K = a_rows.shape[0], b.shape[0], b.shape[1]
        self.ctx = lib.ggml_init(_InitParams(a_rows.nbytes + b.nbytes + 4 * M * N + (64 << 20), None, False))
        a = lib.ggml_new_tensor_2d(self.ctx, a_type, K, M)
        bt = lib.ggml_new_tensor_2d(self.ctx, 0, K, N)       # GGML_TYPE_F32
        for t, arr in ((a, a_rows), (bt, b)):
            arr = np.ascontiguousarray(arr)
            assert lib.ggml_nbytes(t) == arr.nbytes, (lib.ggml_nbytes(t), arr.nbytes)
            C.memmove(lib.ggml_get_data(t), arr.ctypes.data, arr.nbytes)
        self.out = lib.ggml_mul_mat(self.ctx, a, bt)
        self.graph = lib.ggml_new_graph(self.ctx)
        lib.ggml_build_forward_expand(self.graph, self.out)
        self.plan = lib.ggml_graph_plan(self.graph, n_threads)
        self.work = np.zeros(max(1, self.plan.work_size), np.uint8)
        self.plan.work_data = self.work.ctypes.data
        self.shape = (N, M)

    def run(self):
        self.lib.ggml_graph_compute(self.graph, C.byref(self.plan))

    def result(self) -> np.ndarray:
        n = self.shape[0] * self.shape[1]
        buf = (C.c_float * n).from_address(self.lib.ggml_get_data(self.out))
        return np.frombuffer(buf, np.float32).reshape(self.shape).copy()

    def close(self):
        if self.ctx:
            self.lib.ggml_free(self.ctx)
            self.ctx = None
