"""Started by tests/test_distributed.py under mpiexec (one copy per rank):

    mpi_runner.py train-text OUT.npz ARGS... [:: OUT2.npz ARGS...]   graphcore-train-text runs, one after another
    mpi_runner.py baby-llama OUT.npz ARGS...                         a baby-llama training run
    mpi_runner.py fault KIND ARGS...                                 baby-llama's main() with rank 1 failing

Rank 0 saves each run's losses (float32, every digit) and final parameters to OUT.npz. In fault
mode rank 1 fails at its second batch (after the start-up check): KIND is die (the process exits),
hang (it sleeps) or raise (an exception)."""
from __future__ import annotations

import importlib
import os
import sys
import time

import numpy as np

from graphcore import distributed
from graphcore_models import baby_llama, train_text
from graphcore_models.baby_llama.cli import train_model


def _save(world, path, history, tensors, **more):
    if world.rank == 0:
        np.savez(path, history=np.asarray(history, np.float32),
                 params=np.concatenate([np.asarray(t).reshape(-1) for t in tensors]), **more)


def _jobs(argv):
    job = []
    for x in argv + ["::"]:
        if x == "::":
            yield job[0], job[1:]
            job = []
        else:
            job.append(x)


def main(argv):
    mode, rest = argv[0], argv[1:]
    if mode == "fault":
        kind, args = rest[0], rest[1:]
        if int(os.environ.get("PMI_RANK", "0")) == 1:
            mod = importlib.import_module("graphcore_models.baby_llama.train")
            real, calls = mod.get_example_targets_batch, []

            def failing(*a, **k):
                calls.append(1)
                if len(calls) == 2:
                    if kind == "die":
                        os._exit(7)
                    if kind == "hang":
                        time.sleep(3600)
                    raise RuntimeError("injected failure")
                return real(*a, **k)
            mod.get_example_targets_batch = failing
        return baby_llama.main(args)
    world = distributed.World(timeout=60)
    out = open(os.devnull, "w")
    if mode == "train-text":
        for path, args in _jobs(rest):
            r = train_text.run(train_text.parse_args(args), out, world)
            _save(world, path, r["history"], [t.numpy() for t in r["model"].tensors()])
    elif mode == "baby-llama":
        args = baby_llama.parser().parse_args(rest[1:])
        model, _, history, stats = train_model(args, world, out)
        _save(world, rest[0], history, [t.numpy() for t in model.tensors()], n_evals=stats["n_evals"])
    else:
        raise SystemExit(f"mpi_runner: unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
