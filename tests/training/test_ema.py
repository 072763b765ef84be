import pytest
import torch

from hirune.training.ema import EMA


def test_ema_matches_the_recurrence_with_warmup():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for k in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + k) / (10 + k))
        for n, p in model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.detach()
        ema.update(model)
    for n in expected:
        torch.testing.assert_close(ema.shadow[n], expected[n])


def test_applied_swaps_and_restores():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    before = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight, ema.shadow["weight"])
    torch.testing.assert_close(model.weight, before)


def test_state_round_trip_and_bad_input():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.99)
    ema.update(model)
    other = EMA(torch.nn.Linear(2, 1), decay=0.99)
    other.load_state_dict(ema.state_dict(), ema.num_updates)
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict({"weight": torch.zeros(1, 2)}, 0)
