"""tools/ggml_c.py (ggml's C through ctypes, for the benchmarks): a directory without libllama.so gives a
clear error and `python -m graphcore_tools.bench quant --llama-cpp DIR` exits with one line naming it."""
import subprocess
import sys

import pytest

from graphcore_tools import ggml_c


def test_load_names_the_missing_library(tmp_path):
    with pytest.raises(FileNotFoundError, match="make libllama.so"):
        ggml_c.load(str(tmp_path))


def test_bench_quant_refuses_a_directory_without_the_library(tmp_path):
    r = subprocess.run([sys.executable, "-m", "graphcore_tools.bench", "quant", "--llama-cpp", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "libllama.so" in r.stderr and "Traceback" not in r.stderr
