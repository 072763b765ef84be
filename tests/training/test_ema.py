import pytest
import torch

from hirune.training.ema import EMA, gamma_of_sigma_rel, sigma_rel


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


@pytest.mark.parametrize("gamma", [0.5, 6.94, 16.97])
def test_a_power_ema_is_the_closed_form_average_of_every_step(gamma):
    # decay_t = (1 - 1/t)^(gamma+1) telescopes: after T steps the shadow is sum_t w_t theta_t with
    # w_t = (t^(gamma+1) - (t-1)^(gamma+1)) / T^(gamma+1), weights that grow like t^gamma
    model = torch.nn.Linear(3, 1, bias=False).double()
    ema, seen = EMA(model, decay=0.9, gamma=gamma), []
    for _ in range(40):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        seen.append(model.weight.detach().clone())
        ema.update(model)
    T, e = len(seen), gamma + 1
    expected = sum(((t / T) ** e - ((t - 1) / T) ** e) * w for t, w in enumerate(seen, 1))
    torch.testing.assert_close(ema.shadow["weight"], expected)


def test_sigma_rel_and_its_inverse():
    assert sigma_rel(6.94) == pytest.approx(0.10, abs=2e-4) and sigma_rel(16.97) == pytest.approx(0.05, abs=2e-4)
    for width in (0.01, 0.05, 0.1, 0.2):
        assert sigma_rel(gamma_of_sigma_rel(width)) == pytest.approx(width, rel=1e-9)
    with pytest.raises(ValueError, match="sigma_rel must be in"):
        gamma_of_sigma_rel(0.3)


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
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        EMA(model, gamma=-1.0)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict({"weight": torch.zeros(1, 2)}, 0)
