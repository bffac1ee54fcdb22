"""Adam and L-BFGS as in ggml_opt: known optima, result codes, resuming."""
import numpy as np
import pytest

import graphcore as gc

scipy_optimize = pytest.importorskip("scipy.optimize")


def _graphs(ctx, f):
    gf = gc.new_graph_custom(ctx, 2048, True)
    gc.build_forward_expand(gf, f)
    gb = gc.graph_dup(ctx, gf)
    gc.build_backward_expand(ctx, gf, gb, True)
    return gf, gb


def _test_opt_problem(ctx, seed=0):
    rng = np.random.default_rng(seed)
    a = gc.from_numpy(ctx, rng.uniform(-1, 1, (128, 4)).astype(np.float32))
    b = gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 4)).astype(np.float32))
    c = gc.from_numpy(ctx, rng.uniform(-1, 1, (256, 128)).astype(np.float32))
    gc.set_param(ctx, a)
    gc.set_param(ctx, b)
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, c, gc.mul_mat(ctx, a, b))))
    return a, b, f


def test_adam_test_opt_problem_loss_falls_monotonically():
    ctx = gc.init(64 << 20)
    a, b, f = _test_opt_problem(ctx)
    gf, gb = _graphs(ctx, f)
    params = gc.opt_default_params(gc.OPT_ADAM)
    params.adam.n_iter = 20
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    losses = []
    for _ in range(10):
        res = gc.opt_resume_g(ctx, opt, f, gf, gb)
        assert res in (gc.OPT_OK, gc.OPT_DID_NOT_CONVERGE)
        losses.append(opt.loss_after)
    assert all(y < x for x, y in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]


def test_lbfgs_least_squares_reaches_closed_form():
    ctx = gc.init(16 << 20)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((40, 8)).astype(np.float32)
    y = rng.standard_normal(40).astype(np.float32)
    x = gc.from_numpy(ctx, np.zeros((1, 8), np.float32))       # ne [8, 1]
    gc.set_param(ctx, x)
    At = gc.from_numpy(ctx, A)                                 # ne [8, 40]
    yt = gc.from_numpy(ctx, y.reshape(1, 40))                  # ne [40, 1]
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, gc.mul_mat(ctx, At, x), yt)))
    params = gc.opt_default_params(gc.OPT_LBFGS)
    params.lbfgs.eps = 1e-7
    params.lbfgs.n_iter = 200
    res = gc.opt(ctx, params, f)
    want = np.linalg.lstsq(A.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    assert res in (gc.OPT_OK, gc.LINESEARCH_MINIMUM_STEP, gc.LINESEARCH_MAXIMUM_ITERATIONS), res
    np.testing.assert_allclose(x.numpy(), want, atol=1e-4)


def _rosenbrock(ctx, n, x0):
    x = gc.from_numpy(ctx, x0.astype(np.float32))
    gc.set_param(ctx, x)
    x1 = gc.view_1d(ctx, x, n - 1, 0)
    x2 = gc.view_1d(ctx, x, n - 1, 4)
    ones = gc.from_numpy(ctx, np.ones(n - 1, np.float32))
    f = gc.sum(ctx, gc.add(ctx, gc.scale(ctx, gc.sqr(ctx, gc.sub(ctx, x2, gc.sqr(ctx, x1))), 100.0),
                           gc.sqr(ctx, gc.sub(ctx, ones, x1))))
    return x, f


@pytest.mark.parametrize("n", [2, 5])
def test_lbfgs_rosenbrock_like_scipy(n):
    x0 = np.full(n, -1.2)
    x0[1::2] = 1.0
    ctx = gc.init(16 << 20)
    x, f = _rosenbrock(ctx, n, x0)
    gf, gb = _graphs(ctx, f)
    params = gc.opt_default_params(gc.OPT_LBFGS)
    params.lbfgs.n_iter = 500
    params.lbfgs.eps = 1e-6
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    res = gc.opt_resume_g(ctx, opt, f, gf, gb)
    assert res in (gc.OPT_OK, gc.LINESEARCH_MINIMUM_STEP, gc.LINESEARCH_MAXIMUM_ITERATIONS), gc.optim.RESULT_NAMES[res]
    np.testing.assert_allclose(x.numpy(), np.ones(n), atol=1e-3)   # float32 objective: 1e-3 in x is 1e-6 in f
    assert gc.get_f32_1d(f, 0) < 1e-6

    def fun(v):
        v = np.asarray(v, dtype=np.float64)
        return float(np.sum(100 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2))
    ref = scipy_optimize.minimize(fun, x0, method="L-BFGS-B", jac="2-point")
    # evaluations comparable to scipy's (which also counts finite-difference evaluations / (n+1))
    assert opt.n_evals <= 3 * max(ref.nfev // (n + 1), ref.nit) + 20, (opt.n_evals, ref.nfev, ref.nit)


def test_invalid_wolfe_and_cancel_and_steps():
    ctx = gc.init(16 << 20)
    x, f = _rosenbrock(ctx, 3, np.array([-1.2, 1.0, -1.2]))
    gf, gb = _graphs(ctx, f)

    def run(**kw):
        params = gc.opt_default_params(gc.OPT_LBFGS)
        for k, v in kw.items():
            setattr(params.lbfgs, k, v)
        x.numpy()[...] = [-1.2, 1.0, -1.2]
        opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
        return gc.opt_resume_g(ctx, opt, f, gf, gb)

    assert run(wolfe=1e-5) == gc.OPT_INVALID_WOLFE
    assert run(wolfe=1.0) == gc.OPT_INVALID_WOLFE
    assert run(min_step=1e3) == gc.LINESEARCH_MINIMUM_STEP
    assert run(max_step=1e-30) == gc.LINESEARCH_MAXIMUM_STEP
    assert run(max_linesearch=1, ftol=0.999, wolfe=0.9999) == gc.LINESEARCH_MAXIMUM_ITERATIONS

    params = gc.opt_default_params(gc.OPT_LBFGS)
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    calls = []

    def cancel_on_third(data, accum_step, sched):
        calls.append(accum_step)
        return len(calls) >= 3
    assert gc.opt_resume_g(ctx, opt, f, gf, gb, cancel_on_third) == gc.OPT_CANCEL
    assert len(calls) == 3

    params = gc.opt_default_params(gc.OPT_ADAM)
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    assert gc.opt_resume_g(ctx, opt, f, gf, gb, lambda d, s, sch: True) == gc.OPT_CANCEL


def test_nan_loss_is_a_clear_result():
    ctx = gc.init(16 << 20)
    x = gc.from_numpy(ctx, np.array([-1.0, 2.0], np.float32))
    gc.set_param(ctx, x)
    f = gc.sum(ctx, gc.sqrt(ctx, x))           # sqrt(-1): NaN
    for kind in (gc.OPT_ADAM, gc.OPT_LBFGS):
        assert gc.opt(ctx, gc.opt_default_params(kind), f) == gc.OPT_FAIL


def test_adam_resume_equals_one_long_run():
    def final_params(chunks):
        ctx = gc.init(64 << 20)
        a, b, f = _test_opt_problem(ctx, seed=3)
        gf, gb = _graphs(ctx, f)
        params = gc.opt_default_params(gc.OPT_ADAM)
        params.adam.n_iter = 16 // chunks
        params.adam.eps_f = 0.0
        params.max_no_improvement = 0
        opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
        for _ in range(chunks):
            gc.opt_resume_g(ctx, opt, f, gf, gb)
        assert opt.iter == 16
        return a.numpy().copy(), b.numpy().copy()

    one, two = final_params(1), final_params(2)
    assert one[0].tobytes() == two[0].tobytes() and one[1].tobytes() == two[1].tobytes()


def test_lbfgs_resume_continues_descending():
    # ggml's L-BFGS restarts its direction from -g on every call but keeps step, history and k;
    # a resumed run therefore differs from one long run, and must still descend.
    ctx = gc.init(16 << 20)
    x, f = _rosenbrock(ctx, 4, np.array([-1.2, 1.0, -1.2, 1.0]))
    gf, gb = _graphs(ctx, f)
    params = gc.opt_default_params(gc.OPT_LBFGS)
    params.lbfgs.n_iter = 5
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    prev = None
    for _ in range(4):
        gc.opt_resume_g(ctx, opt, f, gf, gb)
        assert prev is None or opt.loss_after <= prev
        prev = opt.loss_after
    assert opt.k > 5


def test_opt_argument_errors():
    ctx = gc.init(1 << 20)
    with pytest.raises(gc.GraphError):
        gc.opt_default_params(7)
    x = gc.from_numpy(ctx, np.ones(3, np.float32))
    with pytest.raises(gc.GraphError, match="scalar|no nodes"):
        gc.opt(ctx, gc.opt_default_params(gc.OPT_ADAM), x)
    with pytest.raises(gc.GraphError):
        gc.opt(ctx, "adam", x)


def test_non_descent_direction_fails_the_line_search():
    # With the Armijo-only line search nothing enforces curvature: on a concave f the first pair
    # has y.s < 0, the next L-BFGS direction points uphill, and the line search refuses it
    # (LINESEARCH_FAIL), restoring the last accepted point in the graph.
    ctx = gc.init(1 << 20)
    x = gc.from_numpy(ctx, np.array([1.2], np.float32))
    gc.set_param(ctx, x)
    f = gc.sum(ctx, gc.scale(ctx, gc.sqr(ctx, x), -0.5))
    gf, gb = _graphs(ctx, f)
    params = gc.opt_default_params(gc.OPT_LBFGS)
    params.lbfgs.linesearch = gc.LINESEARCH_BACKTRACKING_ARMIJO
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    assert gc.opt_resume_g(ctx, opt, f, gf, gb) == gc.LINESEARCH_FAIL
    assert float(x.numpy()[0]) == pytest.approx(2.2, rel=1e-6)     # the accepted step, 1/||d|| = 1


def test_result_codes_print_as_their_names_and_equal_ggmls_numbers():
    assert repr(gc.OPT_DID_NOT_CONVERGE) == "OPT_DID_NOT_CONVERGE" and str(gc.OPT_OK) == "OPT_OK"
    assert repr(gc.OPT_LBFGS) == "OPT_LBFGS" and gc.OPT_LBFGS == 1 == gc.OPT_DID_NOT_CONVERGE
    assert repr(gc.LINESEARCH_FAIL) == "LINESEARCH_FAIL" and gc.LINESEARCH_FAIL == -128
    ctx = gc.init(1 << 20)
    x = gc.set_param(ctx, gc.from_numpy(ctx, np.array([3.0, -2.0], np.float32)))
    f = gc.sum(ctx, gc.sqr(ctx, x))
    params = gc.opt_default_params(gc.OPT_ADAM)
    params.adam.n_iter = 3
    res = gc.opt(ctx, params, f)
    assert isinstance(res, gc.optim.OptResult) and repr(res).startswith("OPT_")


@pytest.mark.parametrize("kind", [gc.OPT_LBFGS, gc.OPT_ADAM])
def test_reduce_hook_drives_the_optimizer_like_data_parallel_ranks(kind):
    """opt_resume_g(reduce=): called after every evaluation (each L-BFGS line-search trial, each Adam
    step) with the loss and gradient of the graph's half of the rows; adding the other half's, as
    an allreduce would, makes the optimizer solve the whole least-squares problem."""
    ctx = gc.init(16 << 20)
    rng = np.random.default_rng(2)
    A = rng.standard_normal((40, 8)).astype(np.float32)
    y = rng.standard_normal(40).astype(np.float32)
    x = gc.from_numpy(ctx, np.zeros((1, 8), np.float32))
    gc.set_param(ctx, x)
    f = gc.sum(ctx, gc.sqr(ctx, gc.sub(ctx, gc.mul_mat(ctx, gc.from_numpy(ctx, A[:20]), x),
                                       gc.from_numpy(ctx, y[:20].reshape(1, 20)))))
    gf, gb = _graphs(ctx, f)
    calls = []

    def other_half(fx, g):
        r = A[20:].astype(np.float64) @ x.numpy().reshape(-1) - y[20:]
        calls.append(float(fx))
        g += (2 * A[20:].T.astype(np.float64) @ r).astype(np.float32)
        return fx + np.float32(r @ r)
    params = gc.opt_default_params(kind)
    if kind == gc.OPT_LBFGS:
        params.lbfgs.n_iter, params.lbfgs.eps = 200, 1e-7
    else:
        params.adam.n_iter, params.adam.alpha, params.adam.eps_f = 3000, 0.02, 0.0
    opt = gc.opt_init(ctx, gc.OptContext(), params, 0)
    gc.opt_resume_g(ctx, opt, f, gf, gb, reduce=other_half)
    assert len(calls) == opt.n_evals > 1
    want = np.linalg.lstsq(A.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(x.numpy().reshape(-1), want, atol=2e-3)
    r = A.astype(np.float64) @ want - y
    assert abs(opt.loss_after - r @ r) < 1e-3 * (r @ r)       # the loss the optimizer saw is the whole one
