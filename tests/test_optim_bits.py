"""The optimizers take bit for bit the steps they took before their per-iteration vector work was
compiled (recorded by tools/record_optim_bits.py from the earlier implementation): every L-BFGS line
search, a history that wraps, resumed calls, gradient accumulation, Adam(W) with clipping, and
baby-llama's first batches."""
import json
import os

import pytest

from graphcore_tools import record_optim_bits as rec

RECORDED = json.load(open(os.path.join(os.path.dirname(__file__), "data", "optim_bits.json")))


@pytest.mark.parametrize("name", sorted(rec.CASES))
def test_optimizer_steps_are_the_recorded_bits(name):
    assert rec.run_case(name) == RECORDED[name]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_baby_llama_batches_are_the_recorded_bits(optimizer):
    assert rec.run_baby_llama(optimizer) == RECORDED[f"baby_llama_{optimizer}"]
