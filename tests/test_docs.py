"""The README documents every registered op."""
import pathlib
import re

import graphcore as gc

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_lists_every_op():
    words = set(re.findall(r"[a-z_0-9]+", README))
    missing = [op.name.lower() for op in gc.OPS if op.name != "NONE" and op.name.lower() not in words]
    assert not missing, f"README does not mention: {missing}"


def test_readme_gives_the_two_setup_commands():
    assert ".venv/bin/python -m models.baby_llama" in README
    assert ".venv/bin/python -m pytest -q" in README


def test_readme_examples_run():
    """The README's first graph and its training example run as written."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    scope = {}
    exec("import numpy as np\nimport graphcore as gc\n" + "\n".join(blocks[:2]), scope)
    assert scope["y"].ne[:2] == [3, 3]            # its context was freed by the with block
    assert scope["a"].grad.numpy().shape == (128, 4)
    assert scope["result"] in (gc.OPT_OK, gc.OPT_DID_NOT_CONVERGE)
