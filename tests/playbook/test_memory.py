"""The single-process playbooks: memory over the first steps, the parameter formula, saved
activations against b and s, and recomputation.  Each harness is shown to reject a broken variant."""

from __future__ import annotations

import pytest
import torch

from hirune.playbook import activations, memory, parameters, recompute
from hirune.playbook.gpt import GPT, GPTConfig

SMALL = dict(layers=1, hidden=16, heads=2, vocab=32, seq=8, batch=2, steps=2)


def test_optimizer_state_appears_after_the_first_step():
    rows = memory.profile(**SMALL)
    assert memory.surprises(rows) == []
    weights = rows[0]["weights"]
    optimizer = {(r["step"], r["phase"]): r["optimizer"] for r in rows}
    assert optimizer[(1, "backward")] == 0 and optimizer[(1, "step")] >= 2 * weights   # created lazily by step 1
    assert [r["gradients"] for r in rows if r["phase"] == "zero_grad"] == [0, 0]
    assert all(r["activations"] > 0 for r in rows if r["phase"] == "forward")


@pytest.mark.parametrize("broken", [{"set_to_none": False}, {"retain_graph": True}])
def test_profile_harness_rejects_held_memory(broken):
    """Harness: zeroed gradients kept (set_to_none=False) or a retained graph are reported."""
    assert memory.surprises(memory.profile(**SMALL, **broken))


def test_parameter_formula_equals_the_real_count():
    rows = parameters.compare()
    assert parameters.mismatches(rows) == []
    assert rows[-1]["real"] == 124_439_808   # GPT-2 small's shape


def test_parameter_harness_rejects_a_formula_without_biases():
    def no_biases(config):
        terms = parameters.formula(config)
        return {**terms, "blocks": config.layers * 12 * config.hidden ** 2}

    assert len(parameters.mismatches(parameters.compare(formula=no_biases))) == len(parameters.SHAPES)


@pytest.fixture(scope="module")
def sweeps():
    grid = dict(layers=1, hidden=32, heads=4, vocab=32, batches=(1, 2), seqs=(8, 16, 32))
    return {a: activations.sweep(a, **grid) for a in ("math", "sdpa")}


def test_saved_bytes_are_the_formula_and_the_s2_term_is_the_math_attention(sweeps):
    for run in sweeps.values():
        assert activations.disagreements(run) == []
        assert run["fit_layer"]["max_relative_residual"] < 1e-9
        assert run["fit_layer"]["alpha"] == pytest.approx(run["formula_alpha"], rel=1e-9)
    assert sweeps["math"]["fit_layer"]["beta"] == pytest.approx(4 * 4, rel=1e-9)   # 4 bytes x a heads
    assert abs(sweeps["sdpa"]["fit_layer"]["beta"]) < 1e-6


def test_activation_harness_rejects_the_formula_without_layernorm_statistics(sweeps):
    """Harness: the notes' terms alone (64 h, no 16 bytes of LayerNorm mean and 1/std) miss."""
    def without_statistics(s, b, h, a, attention):
        return activations.layer_bytes(s, b, h, a, attention) - 16 * s * b

    assert activations.disagreements(sweeps["math"], without_statistics)


def test_recomputation_keeps_less_and_gives_the_same_gradients():
    rows = {r["mode"]: r for r in recompute.compare(layers=2, hidden=16, heads=2, vocab=32, seq=16, batch=2,
                                                    repeats=1)}
    assert all(r["max_grad_diff"] == 0 for r in rows.values())
    # selective drops the (b, a, s, s) float32 softmax output of each of the L layers
    assert rows["none"]["kept_bytes"] - rows["selective"]["kept_bytes"] == 2 * 4 * 2 * 16 * 16 * 2
    assert rows["full"]["kept_bytes"] < rows["selective"]["kept_bytes"]
    rows = recompute.compare(layers=2, hidden=16, heads=2, vocab=32, seq=16, batch=2, repeats=1, dropout=0.2)
    assert all(r["max_grad_diff"] == 0 for r in rows)   # dropout: the masks are replayed


def test_recompute_harness_rejects_recomputation_without_the_random_state():
    """Harness: recomputing with fresh dropout masks (preserve_rng_state=False) changes the gradients."""
    from torch.utils.checkpoint import checkpoint

    def forgetful(config: GPTConfig) -> GPT:
        model = GPT(config)
        for m in model.modules():
            if hasattr(m, "recompute"):
                m.recompute = lambda fn, *a: checkpoint(fn, *a, use_reentrant=False, preserve_rng_state=False)
        return model

    rows = recompute.compare(layers=2, hidden=16, heads=2, vocab=32, seq=16, batch=2, repeats=1, dropout=0.2,
                             build=forgetful)
    assert rows[0]["max_grad_diff"] == 0
    assert all(r["max_grad_diff"] > 1e-4 for r in rows[1:])
