import os
import signal
import subprocess

import pytest

from graphcore.testing import load_profile

# the kit's hypothesis profiles (graphcore.testing.profiles): ci (the default here: reproducible,
# no deadline, since first calls JIT-compile kernels), dev (random), fuzz (many more examples)
load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def interrupt_at():
    """run(cmd, marker, cwd): start cmd, send it SIGINT (Ctrl-C) when a line of its stdout contains
    marker, wait for it (with a timeout); returns (exit status, the stdout after that line, stderr)."""
    def run(cmd, marker, cwd, timeout=120):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        try:
            for line in p.stdout:
                if marker in line:
                    p.send_signal(signal.SIGINT)
                    break
            out, err = p.communicate(timeout=timeout)
        finally:
            p.kill()
        return p.returncode, out, err
    return run
