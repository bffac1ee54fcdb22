"""Seconds per Adam iteration and peak RSS of graphcore-train-text against llama.cpp's
train-text-from-scratch, the two run alternately in the same session on the same options.

    python -m graphcore_tools.bench_train_text --c-binary /path/to/train-text-from-scratch \\
        --vocab-model tests/data/ggml-vocab-llama.gguf --train-data /usr/share/common-licenses/GPL-3

The time of an iteration is the gap between two consecutive progress lines (read as they are
printed; the C program's stdout is line-buffered with stdbuf), the first gap left out (warm-up);
each program's figure is the median over its iterations and runs. Peak RSS from wait4.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def one_run(cmd):
    """(gaps between progress lines in seconds, peak RSS in MB, the loss at iteration 1)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stamps, loss1 = [], None
    for line in p.stdout:
        if "train_opt_callback: iter=" in line:
            stamps.append(time.perf_counter())
            if " iter=     1 " in line:
                loss1 = float(line.split("loss=")[1].split()[0])
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"bench_train_text: {cmd[0]} failed (status {status})")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][1:]
    return gaps, ru.ru_maxrss / 1024.0, loss1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c-binary", required=True, help="llama.cpp 4480542's train-text-from-scratch")
    ap.add_argument("--vocab-model", required=True)
    ap.add_argument("--train-data", required=True)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--iters", type=int, default=6, help="Adam iterations per run")
    ap.add_argument("--runs", type=int, default=2, help="runs of each program per thread count")
    ap.add_argument("--options", default="--ctx 64 --embd 256 --head 8 --layer 4 -b 8",
                    help="model and batch options for both programs")
    a = ap.parse_args(argv)
    common = a.options.split() + ["--vocab-model", a.vocab_model, "--train-data", a.train_data, "-s", "1",
                                  "--checkpoint-in", "", "--checkpoint-out", "", "--model-out", "",
                                  "--save-every", "0", "--adam-iter", str(a.iters)]
    stdbuf = [shutil.which("stdbuf"), "-oL"] if shutil.which("stdbuf") else []
    progs = {"C": stdbuf + [a.c_binary], "graphcore": [sys.executable, "-m", "graphcore_models.train_text"]}
    print(f"options: {a.options}, {a.iters} Adam iterations, {a.runs} runs each")
    for nt in [int(x) for x in a.threads.split(",")]:
        res = {k: ([], [], None) for k in progs}
        for _ in range(a.runs):
            for name, cmd in progs.items():
                gaps, rss, loss1 = one_run(cmd + common + ["-t", str(nt)])
                res[name][0].extend(gaps)
                res[name][1].append(rss)
                res[name] = (res[name][0], res[name][1], loss1)
        med = {k: statistics.median(v[0]) for k, v in res.items()}
        for name, (gaps, rss, loss1) in res.items():
            print(f"  -t {nt} {name:>9}: {med[name]:7.3f} s/iter (median of {len(gaps)})  peak RSS {max(rss):7.0f} MB"
                  f"  loss@1 {loss1}")
        print(f"  -t {nt} ratio graphcore/C: {med['graphcore'] / med['C']:.2f}x")


if __name__ == "__main__":
    main()
