"""The optimizers take bit for bit the steps they took before their per-iteration vector work was
compiled (recorded by tools/record_optim_bits.py from the earlier implementation): every L-BFGS line
search, a history that wraps, resumed calls, gradient accumulation, Adam(W) with clipping, and
baby-llama's first batches."""
import json
import os

import numpy as np
import pytest

from graphcore_tools import record_optim_bits as rec

RECORDED = json.load(open(os.path.join(os.path.dirname(__file__), "data", "optim_bits.json")))


@pytest.fixture(scope="module")
def same_arithmetic():
    if rec.fingerprint() != RECORDED["fingerprint"]:
        pytest.skip("recorded on a CPU whose vectorised float64 dot or BLAS sums in another order, or with "
                    "graph kernels that have changed since (the gradients' bits differ): the steps' bits differ "
                    "for reasons outside the optimizer (python -m graphcore_tools.record_optim_bits records anew)")


@pytest.mark.parametrize("name", sorted(rec.CASES))
def test_optimizer_steps_are_the_recorded_bits(name, same_arithmetic):
    assert rec.run_case(name) == RECORDED[name]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_baby_llama_batches_are_the_recorded_bits(optimizer, same_arithmetic):
    assert rec.run_baby_llama(optimizer) == RECORDED[f"baby_llama_{optimizer}"]


def test_compiled_lbfgs_steps_equal_their_numpy_composition():
    """The fused compiled calls against the numpy steps they replace, on any machine (the recording
    above holds for CPUs that sum _dot's lanes and run BLAS as the recording machine did): the
    curvature pair and two-loop recursion, a line-search trial point, the gradient gathered onto zero."""
    from graphcore import optim_kernels as O
    rng = np.random.default_rng(5)
    for n, m, e, bound in [(12960, 6, 2, 6), (37, 3, 0, 1), (5, 4, 3, 4), (1000, 6, 5, 3)]:
        f32 = lambda *s: rng.standard_normal(s).astype(np.float32)     # noqa: E731
        x, xp, g, gp, d, lm_s, lm_y = f32(n), f32(n), f32(n), f32(n), f32(n), f32(m, n), f32(m, n)
        lm_ys, lm_al = np.abs(f32(m)) + 1, f32(m)
        want = [a.copy() for a in (xp, gp, d, lm_s, lm_y, lm_ys, lm_al)]
        wxp, wgp, wd, ws, wy, wys, wal = want
        ws[e], wy[e] = x - xp, g - gp
        ys, yy = np.float32(O._dot(wy[e], ws[e])), np.float32(O._dot(wy[e], wy[e]))
        wys[e] = ys
        j = O._two_loop(wd, g, ws, wy, wys, wal, (e + 1) % m, bound, float(ys / yy))
        wxp[:], wgp[:] = x, g
        assert O._lbfgs_direction(x, xp, g, gp, d, lm_s, lm_y, lm_ys, lm_al, e, bound) == j
        for got, w in zip((xp, gp, d, lm_s, lm_y, lm_ys, lm_al), want):
            assert np.array_equal(got.view(np.uint32), w.view(np.uint32))

        offs = np.array([0, n // 3, n // 3, n], np.int64)
        params = np.zeros(n, np.float32)
        addrs = np.array([params.ctypes.data + 4 * int(o) for o in offs[:-1]], np.int64)
        step = 0.37
        O._step_scatter(x, xp, d, step, addrs, offs)
        assert np.array_equal(x.view(np.uint32), (xp + d * np.float32(step)).view(np.uint32))
        assert np.array_equal(params.view(np.uint32), x.view(np.uint32))
        params[:3] = -0.0
        got = f32(n)
        O._gather(got, addrs, offs, 0.5, O.GATHER_FIRST)
        w = np.zeros(n, np.float32)
        w += params * np.float32(0.5)
        assert np.array_equal(got.view(np.uint32), w.view(np.uint32))     # -0.0 * 0.5 added to 0 is +0.0
