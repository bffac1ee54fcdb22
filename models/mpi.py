"""What the training programs (baby-llama, graphcore-train-text) share to run data-parallel: the
--distributed and --mpi-timeout options, whether mpiexec started us, and the start of MPI.

graphcore.distributed is imported only here and only when asked for: importing it starts MPI, and
mpi4py is an optional extra (pip install 'graphcore-engine[mpi]')."""
from __future__ import annotations

import os

from graphcore.cli_support import CliError

# what the launchers put in each rank's environment: MPICH's hydra (and Slurm's PMI), Open MPI, MVAPICH
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def add_arguments(parser) -> None:
    g = parser.add_argument_group("data-parallel training (MPI)")
    g.add_argument("--distributed", action="store_true",
                   help="train data-parallel over MPI (automatic under mpiexec with more than one rank): the "
                        "global batch is split evenly over the ranks, rank 0 alone prints and writes files")
    g.add_argument("--mpi-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="end the job with an error when the ranks wait for each other longer than this "
                        "(a rank died or hangs; default 300)")


def launched_by_mpiexec(environ=None) -> bool:
    """True when a launcher started this process as one of several ranks."""
    env = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def start(args):
    """A graphcore.distributed.World when args.distributed or mpiexec started several ranks, else None."""
    if not (getattr(args, "distributed", False) or launched_by_mpiexec()):
        return None
    if not args.mpi_timeout > 0:
        raise CliError(f"--mpi-timeout must be positive, got {args.mpi_timeout}")
    try:
        from graphcore import distributed
    except ImportError as e:
        raise CliError(f"data-parallel training needs mpi4py and an MPI library ({e}): pip install "
                       f"'graphcore-engine[mpi]'") from None
    return distributed.World(timeout=args.mpi_timeout)


def rank_output(world, out):
    """`out` on rank 0 (or without MPI); the other ranks print nothing."""
    return out if world is None or world.rank == 0 else open(os.devnull, "w")
