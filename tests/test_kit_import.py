"""The testing kit: importable module by module with no cycle, reachable as gc.testing."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["graphcore.testing.graphgen", "graphcore.testing.strategies",
                                    "graphcore.testing.graphcheck", "graphcore.testing.profiles",
                                    "graphcore.testing"])
def test_each_kit_module_imports_first(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_gc_testing_without_importing_it_and_its_default_profile():
    code = ("import graphcore as gc; from hypothesis import settings\n"
            "assert gc.testing.graphs is not None and gc.testing.assert_graph_close is not None\n"
            "print(settings.get_current_profile_name(), settings.default.deadline)")
    # (hypothesis loads its own "ci" profile, also without a deadline, where CI is set)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HYPOTHESIS_PROFILE", "CI")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["graphcore", "None"]
