"""`hirune sample --compile`: the run samples through its compiled network (dynamo really traces
it: a counting backend sees the frames) and gives the eager samples; runs without a denoiser
network are refused by name."""

from __future__ import annotations

import pytest
import torch

from hirune.cli import main
from hirune.inference import generate, load
from hirune.inference.compiled import CompiledNetwork, compile_network

TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "log_every=1", "batch_size=8", "eval_samples=0",
        'model_config={"channels":8,"channel_mult":[1],"num_res_blocks":1,"attention_resolutions":[]}']


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "ddpm-digits", *TINY, "class_conditional=true", "p_uncond=0.2", f"out={out}"]) == 0
    return str(out)


@pytest.mark.parametrize("guidance", ["none", "cfg"])
def test_the_compiled_network_is_what_samples_and_gives_the_eager_samples(digits_run, guidance):
    from torch._dynamo.testing import CompileCounter  # (torch._dynamo takes seconds to import: not at collection)

    from hirune.inference import guide

    eager_run, run = load(digits_run), load(digits_run)
    counter = CompileCounter()
    compile_network(run, backend=counter)
    assert isinstance(run.denoiser.model, CompiledNetwork)
    want, _ = generate(eager_run, 16, "ddim", 10, seed=3, denoiser=guide(eager_run, guidance, 2.0), progress=False)
    got, _ = generate(run, 16, "ddim", 10, seed=3, denoiser=guide(run, guidance, 2.0), progress=False)
    assert counter.frame_count >= 1                     # traced: the samples came through torch.compile
    torch.testing.assert_close(got.x, want.x, rtol=0, atol=0)
    compile_network(run, backend=counter)                # twice is once
    assert isinstance(run.denoiser.model.net, torch.nn.Module) and not isinstance(run.denoiser.model.net,
                                                                                  CompiledNetwork)


def test_runs_without_a_denoiser_network_are_refused():
    class Flow:
        name = "normalizing_flow"

    with pytest.raises(ValueError, match="--compile applies to runs sampled through a denoiser network .* "
                                         "this is a normalizing_flow run"):
        compile_network(Flow())


@pytest.mark.slow
def test_the_command_with_inductor_gives_the_eager_samples(digits_run, tmp_path):
    import numpy as np

    eager, compiled = tmp_path / "eager.npz", tmp_path / "compiled.npz"
    assert main(["sample", digits_run, "--n", "16", "--sampler", "ddim", "--steps", "10", "--out", str(eager)]) == 0
    assert main(["sample", digits_run, "--n", "16", "--sampler", "ddim", "--steps", "10", "--compile",
                 "--out", str(compiled)]) == 0
    want, got = (next(iter(np.load(path).values())) for path in (eager, compiled))
    np.testing.assert_allclose(got, want, atol=1e-5)
