"""Data-parallel scaling of graphcore-train-text on this machine: 2 MPI ranks x 1 thread against
1 process x 2 threads and 1 process x 1 thread, the same global batch, runs alternated; and the
time of an MPI allreduce per MB (the cost model's constant).

    python -m graphcore_tools.bench_mpi --train-data /usr/share/common-licenses/GPL-3

Needs the mpi extra (pip install '.[mpi]': mpi4py and MPICH's mpiexec). The time of an iteration is
the gap between two consecutive progress lines of rank 0 (the first gap, warm-up, left out); each
setup's figure is the median over its iterations and runs. Steps/s = 1 / that median; the scaling
efficiency of a 2-way setup is its speed-up over 1 x 1 divided by 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(cmd):
    """(gaps between progress lines in seconds, the allreduce line or '')."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stamps, reduce_line = [], ""
    for line in p.stdout:
        if "train_opt_callback: iter=" in line:
            stamps.append(time.perf_counter())
        elif "data-parallel over" in line:
            reduce_line = line.split("main: ", 1)[1].strip()
    err = p.stderr.read()
    if p.wait() != 0:
        raise SystemExit(f"bench_mpi: {' '.join(cmd[:4])}... failed:\n{err[-2000:]}")
    return [b - a for a, b in zip(stamps, stamps[1:])][1:], reduce_line


def probe(sizes_mb, reps):
    """Run under mpiexec: the median time of an in-place float32 Allreduce of each size (rank 0 prints)."""
    from graphcore.distributed import World      # starts MPI: only in the ranks mpiexec starts
    world = World(timeout=120)
    for mb in sizes_mb:
        buf = np.ones(int(mb * 2 ** 20) // 4, np.float32)
        times = []
        for i in range(reps + 2):
            world.comm.Barrier()
            t0 = time.perf_counter()
            world.allreduce(buf)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        if world.rank == 0:
            t = statistics.median(times)
            print(f"  allreduce {mb:6.1f} MB over {world.size} ranks: {t * 1e3:8.2f} ms  ({t * 1e3 / mb:6.2f} ms/MB, "
                  f"{mb / 1024 / t:5.2f} GB/s), median of {reps}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-model", default=os.path.join(ROOT, "tests", "data", "ggml-vocab-llama.gguf"))
    ap.add_argument("--train-data", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--iters", type=int, default=6, help="Adam iterations per run")
    ap.add_argument("--runs", type=int, default=2, help="runs of each setup (alternated)")
    ap.add_argument("--options", default="--ctx 64 --embd 256 --head 8 --layer 4 -b 8",
                    help="model and global batch options")
    ap.add_argument("--probe", action="store_true", help="(internal) the allreduce timing, under mpiexec")
    ap.add_argument("--sizes", default="1,4,16,64", help="allreduce sizes in MB")
    a = ap.parse_args(argv)
    sizes = [float(x) for x in a.sizes.split(",")]
    if a.probe:
        return probe(sizes, reps=10)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("bench_mpi: no mpiexec: pip install '.[mpi]'")
    common = a.options.split() + ["--vocab-model", a.vocab_model, "--train-data", a.train_data, "-s", "1",
                                  "--checkpoint-in", "", "--checkpoint-out", "", "--model-out", "",
                                  "--save-every", "0", "--adam-iter", str(a.iters)]
    prog = [sys.executable, "-m", "graphcore_models.train_text"]
    setups = {"1 process x 1 thread": prog + common + ["-t", "1"],
              "1 process x 2 threads": prog + common + ["-t", "2"],
              "2 ranks x 1 thread": [mpiexec, "-n", "2"] + prog + common + ["-t", "1"]}
    print(f"options: {a.options} (global batch), {a.iters} Adam iterations, {a.runs} runs each, load "
          f"{os.getloadavg()[0]:.2f}")
    gaps = {k: [] for k in setups}
    reduce_lines = []
    for _ in range(a.runs):
        for name, cmd in setups.items():
            g, line = one_run(cmd)
            gaps[name].extend(g)
            if line:
                reduce_lines.append(line)
    med = {k: statistics.median(v) for k, v in gaps.items()}
    base = med["1 process x 1 thread"]
    for name, m in med.items():
        eff = "" if name.startswith("1 process x 1") else f"  scaling efficiency {base / m / 2 * 100:5.1f}%"
        print(f"  {name:>22}: {m:7.3f} s/iter  {1 / m:6.3f} steps/s  speed-up {base / m:4.2f}x{eff}"
              f"  (median of {len(gaps[name])})")
    for line in reduce_lines:
        print(f"  2 ranks: {line}")
    subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "graphcore_tools.bench_mpi", "--probe",
                    "--sizes", a.sizes], check=True, cwd=ROOT)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
