"""Data-parallel training over MPI (graphcore.distributed): 2 ranks under `mpiexec -n 2` against 1
process, for Adam (graphcore-train-text) and L-BFGS (baby-llama); checkpoints crossing between them;
the start-up check; a rank that dies, hangs or raises ends the job in bounded time.

The MPI runs are child processes with timeouts (tests/mpi_runner.py in each rank); the test process
itself never starts MPI. They skip only when mpi4py or mpiexec is missing (CI installs '.[test,mpi]').

Two ranks with a global batch of B compute the gradient of rows [0, B/2) and [B/2, B) and average
them with one allreduce: the same arithmetic, bit for bit, as 1 process with batches of B/2 and two
accumulation steps (x/2 is exact). Against 1 process with batch B only the summation order over
rows differs (relative 1e-5)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from graphcore.gguf_io import gguf_read
from graphcore_models import mpi
from graphcore_models.baby_llama import get_example_targets_batch as baby_batch
from graphcore_models.baby_llama import parser as baby_parser
from graphcore_models.baby_llama.cli import train_model
from graphcore_models.train_text import get_example_targets_batch as text_batch
from graphcore_models.train_text import parse_args, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
RUNNER = os.path.join(ROOT, "tests", "mpi_runner.py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
                               reason="needs mpi4py and mpiexec: pip install '.[mpi]'")
TEXT = ["--ctx", "8", "--embd", "32", "--head", "4", "--layer", "1", "--ff", "48", "-s", "1", "-t", "1",
        "--vocab-model", os.path.join(DATA, "llama_tiny_trained.gguf"), "--train-data",
        os.path.join(DATA, "train_text_bsd.txt"), "--warmup", "2", "--adam-alpha", "0.01", "--model-out", ""]
BABY = ["--examples", "2", "--lbfgs-iters", "16", "--n-batch", "4", "--threads", "1"]


def _mpiexec(*ranks, timeout=120):
    """mpiexec with one argument list per rank (MPMD) or, given one, the same on both ranks."""
    cmd = [MPIEXEC]
    for i, args in enumerate(ranks if len(ranks) > 1 else (ranks[0],)):
        cmd += ([":"] if i else []) + ["-n", "1" if len(ranks) > 1 else "2", sys.executable, *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, time.perf_counter() - t0


def _text(args):
    r = run(parse_args(TEXT + args), open(os.devnull, "w"))
    return np.asarray(r["history"], np.float32), np.concatenate([t.numpy().reshape(-1) for t in r["model"].tensors()])


def _close(losses, params, ref_losses, ref_params):
    """Losses equal within 1e-5 relative each; parameters within 1e-5 relative in norm. (Adam moves a
    weight whose gradient is ~0 by +-alpha on the sign of rounding noise: with the 32,000-piece
    vocabulary a handful of 2 million weights differed by up to 9e-5 = alpha / 100.)"""
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    rel = np.linalg.norm(params.astype(np.float64) - ref_params) / np.linalg.norm(ref_params.astype(np.float64))
    assert rel < 1e-5, rel
    assert np.abs(params - ref_params).max() < 2e-4


# ---------------------------------------------------------------------------------------------
# 2 ranks against 1 process
# ---------------------------------------------------------------------------------------------
@needs_mpi
def test_train_text_adam_two_ranks_equal_one_process_and_checkpoints_cross(tmp_path):
    t = str(tmp_path)
    # 1 process, B/2 rows twice per step: 28 iterations, a checkpoint, 4 more from it
    h1a, _ = _text(["-b", "1", "--grad-acc", "2", "--adam-iter", "28", "--checkpoint-out", f"{t}/one-ITERATION.gguf",
                    "--checkpoint-in", "", "--save-every", "0"])
    h1b, p1 = _text(["-b", "1", "--grad-acc", "2", "--adam-iter", "4", "--checkpoint-in", f"{t}/one-LATEST.gguf",
                     "--checkpoint-out", "", "--save-every", "0"])
    # 2 ranks, B = 2: 32 iterations straight (a checkpoint at 28), and 4 from the 1-process checkpoint
    p, _ = _mpiexec([RUNNER, "train-text", f"{t}/two.npz", *TEXT, "-b", "2", "--adam-iter", "32", "--checkpoint-in",
                     "", "--save-every", "28", "--checkpoint-out", f"{t}/two-ITERATION.gguf", "::", f"{t}/cross.npz",
                     *TEXT, "-b", "2", "--adam-iter", "4", "--checkpoint-in", f"{t}/one-LATEST.gguf",
                     "--checkpoint-out", "", "--save-every", "0"])
    assert p.returncode == 0, p.stderr[-3000:]
    two, cross = np.load(f"{t}/two.npz"), np.load(f"{t}/cross.npz")
    assert len(two["history"]) == 32 and two["history"][-1] < two["history"][0] - 0.5      # it learns
    np.testing.assert_array_equal(two["history"], np.concatenate([h1a, h1b]))
    np.testing.assert_array_equal(two["params"], p1)
    np.testing.assert_array_equal(cross["history"], h1b)            # 1-process checkpoint, 2 ranks go on
    np.testing.assert_array_equal(cross["params"], p1)
    # the 2-rank checkpoint (written by rank 0 alone) goes on in 1 process
    h, p_two_one = _text(["-b", "1", "--grad-acc", "2", "--adam-iter", "4", "--checkpoint-in", f"{t}/two-28.gguf",
                          "--checkpoint-out", "", "--save-every", "0"])
    np.testing.assert_array_equal(h, h1b)
    np.testing.assert_array_equal(p_two_one, p1)
    # 1 process with the whole batch: the rows are summed in another order
    h, p_whole = _text(["-b", "2", "--adam-iter", "32", "--checkpoint-in", "", "--checkpoint-out", "",
                        "--save-every", "0"])
    _close(two["history"], two["params"], h, p_whole)


@needs_mpi
def test_baby_llama_lbfgs_two_ranks_equal_one_process(tmp_path):
    """32 L-BFGS iterations (2 batches x 16): every line-search evaluation reduces the loss and the
    gradient, so the ranks take the steps 1 process takes, with the same number of evaluations."""
    p, _ = _mpiexec([RUNNER, "baby-llama", f"{tmp_path}/two.npz", *BABY])
    assert p.returncode == 0, p.stderr[-3000:]
    two = np.load(f"{tmp_path}/two.npz")
    model, _, history, stats = train_model(baby_parser().parse_args(BABY), None, open(os.devnull, "w"))
    one = np.concatenate([t.numpy().reshape(-1) for t in model.tensors()])
    assert int(two["n_evals"]) == stats["n_evals"] > 32
    _close(two["history"], two["params"], np.asarray(history, np.float32), one)
    assert history[-1][1] < history[0][0] / 2                     # it learns


# ---------------------------------------------------------------------------------------------
# the start-up check and failing ranks
# ---------------------------------------------------------------------------------------------
@needs_mpi
def test_ranks_that_disagree_or_fail_to_start_stop_with_one_message():
    base = ["-m", "graphcore_models.baby_llama", *BABY]
    p, _ = _mpiexec(base, base + ["--seed", "2", "--n-embd", "16"])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and "Example 1" not in p.stdout and len(lines) == 1, p.stderr
    assert lines[0].startswith("baby-llama: error: the 2 ranks disagree on --n-embd (rank 0: 32, rank 1: 16); "
                               "--seed (rank 0: 1337, rank 1: 2); shapes"), lines[0]
    # a rank that cannot read its corpus: its error reaches rank 0, which prints it once
    base = ["-m", "graphcore_models.train_text", *TEXT, "-b", "2", "--adam-iter", "1", "--checkpoint-in", "",
            "--checkpoint-out", ""]
    p, _ = _mpiexec(base, base + ["--train-data", "/nonexistent.txt"])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and "begin training" not in p.stdout and len(lines) == 1, p.stderr
    assert "graphcore-train-text: error: rank 1: " in lines[0] and "/nonexistent.txt" in lines[0]


@needs_mpi
@pytest.mark.parametrize("kind,needle", [("die", ""), ("raise", "baby-llama: rank 1: error: injected failure"),
                                         ("hang", "rank 0: no answer from the other ranks within 3 s")])
def test_a_rank_that_dies_hangs_or_raises_ends_the_job(kind, needle):
    p, seconds = _mpiexec([RUNNER, "fault", kind, *BABY, "--examples", "4", "--mpi-timeout", "3"], timeout=90)
    assert p.returncode != 0 and needle in p.stderr, p.stderr[-3000:]
    assert seconds < 60


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_step(tmp_path, interrupt_at):
    """mpiexec forwards SIGINT to the ranks; the stop flag rides in the gradient allreduce, so both
    stop after the same step and rank 0 alone saves the checkpoint (exit status 130)."""
    rc, out, err = interrupt_at([MPIEXEC, "-n", "2", sys.executable, "-m", "graphcore_models.train_text", *TEXT, "-b", "2",
                                 "--adam-iter", "500", "--checkpoint-in", "", "--save-every", "0", "--checkpoint-out",
                                 str(tmp_path / "c-ITERATION.gguf")], "iter=     3 ", ROOT)
    assert rc == 130, err[-3000:]
    assert "main: interrupted: saving the state reached" in out and out.count("c-LATEST.gguf") == 1
    assert gguf_read(tmp_path / "c-LATEST.gguf").metadata["training.iteration_count"] >= 3


# ---------------------------------------------------------------------------------------------
# without MPI
# ---------------------------------------------------------------------------------------------
def test_a_ranks_rows_are_the_whole_batchs_rows():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 9, size=20)
    begins = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    data = rng.integers(0, 50, size=int(sizes.sum()))
    offs = rng.integers(0, 2, size=20)
    for fill in (False, True):
        args = (offs, begins, sizes, data, 1, 2, True, True, fill, True)
        toks, probs = np.zeros((6, 5), np.int32), np.zeros((6, 5, 50), np.float32)
        used = text_batch(toks, probs, 3, *args)
        for lo in (0, 2, 4):
            t, q = np.zeros((2, 5), np.int32), np.ones((2, 5, 50), np.float32)
            assert text_batch(t, q, 3, *args, lo, 6) == used
            np.testing.assert_array_equal(t, toks[lo:lo + 2])
            np.testing.assert_array_equal(q, probs[lo:lo + 2])
    toks, tgt = np.zeros((4, 8), np.int32), np.zeros((4, 8, 16), np.float32)
    baby_batch(None, 5, toks, tgt)
    t, q = np.zeros((2, 8), np.int32), np.zeros((2, 8, 16), np.float32)
    baby_batch(None, 5, t, q, 2, 4)
    np.testing.assert_array_equal(t, toks[2:])
    np.testing.assert_array_equal(q, tgt[2:])


def test_mpiexec_is_recognised_and_mpi4py_is_optional():
    assert mpi.launched_by_mpiexec({"PMI_SIZE": "2", "PMI_RANK": "1"})
    assert mpi.launched_by_mpiexec({"OMPI_COMM_WORLD_SIZE": "4"})
    assert not mpi.launched_by_mpiexec({"PMI_SIZE": "1"}) and not mpi.launched_by_mpiexec({})
    assert "graphcore.distributed" not in sys.modules and "mpi4py" not in sys.modules   # plain runs never start MPI
    err = subprocess.run([sys.executable, "-c", "import sys; sys.modules['mpi4py'] = None  # as if not installed\n"
                          "from graphcore_models.train_text import main; sys.exit(main(['--distributed']))"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT).stderr
    assert "needs mpi4py" in err and "pip install 'graphcore-engine[mpi]'" in err
