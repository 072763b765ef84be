"""Checkpoints written before attention's q, k, v were separate modules (one fused `qkv`
Linear; cross-attention's `kv`) resume and load: whole-state checkpoints (model, EMA,
position-keyed AdamW state) and FSDP2 shards (`model.`/`ema.`/`optimizer.<fqn>` pieces and
state.json's `parameters`), through `nn.attention.split_fused_projections`.

Real old checkpoints: tests/golden/v0/runs (whole state, recorded at 31bde1a) and
tests/golden/pre_split/dit-zero2, the golden dit run (tests/golden/families.py) trained by
the code just before the split (1a570b5) on two gloo processes under zero2:

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc-per-node=2 \\
        tests/golden/dist_train.py runs2 dit          # then runs2/dit without samples/

`old_layout` below writes today's whole checkpoint as the old code did, and is checked
against the recorded ones (the same files, keys, shapes and AdamW positions)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hirune.checkpoint import (flatten_optimizer_state, latest_checkpoint, load_checkpoint, save_checkpoint,
                               unflatten_optimizer_state)
from hirune.distributed import sharded
from hirune.nn.attention import fused_groups
from hirune.training import Trainer, preset_config, train
from hirune.training.presets import parse_preset_args

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
from families import train_words  # noqa: E402

SHARDED = GOLDEN / "pre_split" / "dit-zero2"


def golden_config(name: str, out: Path, **changes):
    """The golden run `name` (tests/golden/families.py) with `changes`, into `out`."""
    preset, overrides = parse_preset_args(train_words(name))
    return preset_config(preset, {**overrides, **changes, "out": str(out)})


def old_layout(files: dict[str, dict], state: dict, model, swap_kv: bool = False) -> tuple[dict, dict]:
    """Today's whole checkpoint (group -> tensors, state.json) as the code before the split
    wrote it: each fused group's weights and biases (model, EMA, AdamW moments) stacked in
    row order q | k | v (k | v) under `<attention>.qkv` (`.kv`), one AdamW `step` for it, and
    the AdamW positions of the old parameter order (each group in place of its first part).
    swap_kv: a broken writer stacking q | v | k (v | k)."""
    module_name = {id(m): n for n, m in model.named_modules()}
    groups = []
    for group in fused_groups(model):
        parts = [module_name[id(m)] for m in group]
        groups.append((parts[0].rsplit(".", 1)[0] + (".qkv" if len(parts) == 3 else ".kv"), parts))

    def fuse(tensors: dict, suffixes=("",)) -> dict:
        out = dict(tensors)
        for fused, parts in groups:
            for param in ("weight", "bias"):
                for suffix in suffixes:
                    keys = [f"{part}.{param}{suffix}" for part in parts]
                    if keys[0] not in out:
                        continue
                    if swap_kv:
                        keys[-2], keys[-1] = keys[-1], keys[-2]
                    values = [out.pop(k) for k in keys]
                    if values[0].dim() == 0:  # AdamW's step: one per parameter, the same for the parts
                        assert all(torch.equal(v, values[0]) for v in values)
                        out[f"{fused}.{param}{suffix}"] = values[0]
                    else:
                        out[f"{fused}.{param}{suffix}"] = torch.cat(values)
        return out

    names = [n for n, _ in model.named_parameters()]
    first = {f"{part}.{p}": f"{fused}.{p}" for fused, parts in groups for part in parts for p in ("weight", "bias")}
    old_names = list(dict.fromkeys(first.get(n, n) for n in names))
    optim = unflatten_optimizer_state(files["optimizer"], state["optimizer"])
    stats = {f"{names[pid]}.{stat}": v for pid, entries in optim["state"].items() for stat, v in entries.items()}
    by_name = fuse(stats, suffixes=(".exp_avg", ".exp_avg_sq", ".step"))
    position = {n: i for i, n in enumerate(old_names)}
    old_state: dict[int, dict] = {}
    for key, value in by_name.items():
        name, stat = key.rsplit(".", 1)
        old_state.setdefault(position[name], {})[stat] = value
    group = {**optim["param_groups"][0], "params": list(range(len(old_names)))}
    tensors, meta = flatten_optimizer_state({"state": old_state, "param_groups": [group]})
    return {**files, "model": fuse(files["model"]), "ema": fuse(files["ema"]), "optimizer": tensors}, {
        **state, "optimizer": meta}


def rewrite_as_old(run_dir: Path, model, swap_kv: bool = False) -> Path:
    """Replace the run's latest checkpoint by its old-layout twin (a valid checkpoint)."""
    ckpt = latest_checkpoint(run_dir)
    files, state = load_checkpoint(ckpt)
    files, state = old_layout(files, state, model, swap_kv)
    state = {k: v for k, v in state.items() if k not in ("format", "step", "files")}
    return save_checkpoint(run_dir, int(ckpt.name.split("_")[1]), files, state)


def shapes(files: dict[str, dict]) -> dict[str, dict[str, tuple]]:
    return {group: {k: tuple(v.shape) for k, v in tensors.items()} for group, tensors in files.items()}


@pytest.mark.parametrize("name", ["text", "dit"])
def test_old_layout_is_what_the_old_code_wrote(name, tmp_path):
    """`old_layout` of today's golden run = the recorded v0 checkpoint of that run: the same
    files, tensor names and shapes, AdamW state at the same positions (the text run has a
    UNet's pixel self-attention, its cross-attention to the caption (q, then k | v) and the
    caption's own transformer; dit has DiT blocks)."""
    trainer = train(golden_config(name, tmp_path / name), progress=False)
    files, state = old_layout(*load_checkpoint(tmp_path / name), trainer.model)
    recorded, recorded_state = load_checkpoint(GOLDEN / "v0" / "runs" / name)
    assert shapes(files) == shapes(recorded)
    assert state["optimizer"]["param_groups"][0]["params"] == recorded_state["optimizer"]["param_groups"][0]["params"]
    assert any(k.endswith(".kv.weight") for k in files["model"]) == (name == "text")


@pytest.mark.parametrize("name", ["text", "dit"])
def test_an_old_whole_checkpoint_resumes_bitwise(name, tmp_path):
    """4 steps straight = 2 steps, the checkpoint rewritten in the old layout, resumed to 4:
    the same losses and bitwise the same weights, EMA and AdamW state."""
    straight = train(golden_config(name, tmp_path / "a", steps=4, ckpt_every=2), progress=False)
    first = train(golden_config(name, tmp_path / "b", steps=4, ckpt_every=2), stop_after=2, progress=False)
    written = rewrite_as_old(tmp_path / "b", first.model)
    assert "blocks.0.attn.qkv.weight" in load_file(str(written / "model.safetensors")) or name == "text"
    resumed = train(golden_config(name, tmp_path / "b", steps=4, ckpt_every=2, resume=True), progress=False)
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 4
    assert [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(line)["loss"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    a, b = load_checkpoint(tmp_path / "a")[0], load_checkpoint(tmp_path / "b")[0]
    for group in ("model", "ema", "optimizer"):
        assert a[group].keys() == b[group].keys(), group
        for k in a[group]:
            assert torch.equal(a[group][k], b[group][k]), f"{group}.{k}"
    assert resumed.step == straight.step == 4


def test_the_resume_check_catches_k_and_v_swapped(tmp_path):
    """Harness: the same resume from an old checkpoint whose k and v rows are swapped differs."""
    straight = train(golden_config("dit", tmp_path / "a", steps=4, ckpt_every=2), progress=False)
    first = train(golden_config("dit", tmp_path / "b", steps=4, ckpt_every=2), stop_after=2, progress=False)
    rewrite_as_old(tmp_path / "b", first.model, swap_kv=True)
    resumed = train(golden_config("dit", tmp_path / "b", steps=4, ckpt_every=2, resume=True), progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert not torch.equal(a["blocks.0.attn.k.weight"], b["blocks.0.attn.k.weight"])


def rows(fused: torch.Tensor, part: int, parts: int) -> torch.Tensor:
    return fused if fused.dim() == 0 else fused.chunk(parts)[part]


def test_recorded_whole_checkpoints_resume_with_their_weights(tmp_path):
    """The v0 dit and text checkpoints (written before the split), resumed by the trainer:
    every parameter and EMA shadow is its recorded tensor or its rows of the recorded fused
    one, by name; one more step trains."""
    for name in ("dit", "text"):
        run = tmp_path / name
        shutil.copytree(GOLDEN / "v0" / "runs" / name, run)
        trainer = Trainer(golden_config(name, run, steps=4, resume=True), distributed=False)
        trainer.load(run)
        recorded = load_checkpoint(run)[0]
        shadow = trainer.ema.shadow
        for n, p in trainer.model.named_parameters():
            old, i, k = name_in_old_checkpoint(n, recorded["model"])
            assert torch.equal(p.detach(), rows(recorded["model"][old], i, k)), n
            assert torch.equal(shadow[n], rows(recorded["ema"][old], i, k)), n
        trainer.train_step(*trainer.training_data())
        assert trainer.step == 4


def name_in_old_checkpoint(name: str, old: dict) -> tuple[str, int, int]:
    """Where today's parameter `name` is in an old checkpoint: (key, row block, blocks)."""
    if name in old:
        return name, 0, 1
    module, part, param = name.rsplit(".", 2)
    for fused, parts in (("qkv", "qkv"), ("kv", "kv")):
        key = f"{module}.{fused}.{param}"
        if key in old and part in parts:
            return key, parts.index(part), len(parts)
    raise KeyError(name)


def test_an_old_sharded_checkpoint_resumes_on_one_process(tmp_path):
    """The pre-split zero2 shards, resumed by one process: every parameter, EMA shadow and
    AdamW moment (its own `optimizer.<fqn>` entry in the shards: no positions involved) is
    the recorded piece or its rows of the fused one, by name; `step` copied to q, k, v."""
    run = tmp_path / "dit"
    shutil.copytree(SHARDED, run)
    ckpt = latest_checkpoint(run)
    state = load_checkpoint(ckpt)[1]
    assert state["layout"] == "sharded" and "blocks.0.attn.qkv.weight" in state["parameters"]
    assert sharded.holds_fused_projections(state)
    model, ema, optim = sharded.read_full(ckpt, state["optimizer"]["shapes"])
    trainer = Trainer(golden_config("dit", run, steps=4, resume=True, strategy="ddp"), distributed=False)
    trainer.load(run)
    for n, p in trainer.model.named_parameters():
        old, i, k = name_in_old_checkpoint(n, model)
        assert torch.equal(p.detach(), rows(model[old], i, k)), n
        assert torch.equal(trainer.ema.shadow[n], rows(ema[old], i, k)), n
        moments = trainer.optimizer.state[p]
        assert moments.keys() == optim[old].keys() == {"exp_avg", "exp_avg_sq", "step"}
        for stat, value in optim[old].items():
            assert torch.equal(moments[stat], rows(value, i, k)), f"{n}.{stat}"
    q, k = (trainer.optimizer.state[p]["step"] for p in (trainer.model.blocks[0].attn.q.weight,
                                                          trainer.model.blocks[0].attn.k.weight))
    assert q is not k  # AdamW steps each in place
    trainer.train_step(*trainer.training_data())
    assert trainer.step == 4


@pytest.mark.slow
def test_an_old_sharded_checkpoint_resumes_sharded_on_two_processes(tmp_path):
    """The pre-split shards cannot be resharded piece by piece into q, k, v: two zero2
    processes read them whole, split them and shard the result; one step on from there
    equals one process resuming the same checkpoint."""
    from distributed.test_distributed import _ok, torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(SHARDED, one)
    shutil.copytree(SHARDED, two)
    train(golden_config("dit", one, steps=4, resume=True, strategy="ddp"), progress=False)
    preset, *words = train_words("dit", processes=2)
    words = [w for w in words if not w.startswith(("out=", "steps="))]
    _ok(torchrun(2, "train", preset, *words, "steps=4", "resume=true", f"out={two}"))
    assert latest_checkpoint(two).name == "step_00000004"
    la, lb = ([json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two))
    assert len(la) == len(lb) == 4 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (la, lb)
    wa, wb = sharded_or_whole(one), sharded_or_whole(two)
    assert wa.keys() == wb.keys() and "blocks.0.attn.q.weight" in wa
    for key, value in wa.items():
        torch.testing.assert_close(wb[key], value, rtol=1e-4, atol=1e-5, msg=key)


def sharded_or_whole(run: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a run's latest checkpoint, either layout."""
    from hirune.training.export import checkpoint_weights

    return checkpoint_weights(run)[0]


def test_old_sharded_runs_and_old_exports_load_export_and_sample(tmp_path):
    """The light loader (`hirune sample`, `hirune eval`), `hirune export` and the sampling
    of an exported file read the pre-split shards, and a file exported before the split
    (`qkv` keys), in today's names: the same weights as the recorded (EMA) rows, by name."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hirune.cli import main
    from hirune.training.export import export_weights
    from hirune.training.loading import load

    run = tmp_path / "dit"
    shutil.copytree(SHARDED, run)
    ckpt = latest_checkpoint(run)
    _, ema, _ = sharded.read_full(ckpt, load_checkpoint(ckpt)[1]["optimizer"]["shapes"])
    loaded = load(run)
    for n, p in loaded.model.named_parameters():
        old, i, k = name_in_old_checkpoint(n, ema)
        assert torch.equal(p.detach(), rows(ema[old], i, k)), n
    exported = export_weights(run, tmp_path / "new.safetensors")
    with safe_open(str(exported), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert "blocks.0.attn.q.weight" in keys and not any(".qkv." in k for k in keys)
    # a file exported before the split: today's export with the q | k | v rows fused back
    weights = load_file(str(exported))
    for prefix in {k.rsplit(".", 2)[0] for k in weights if k.endswith(".attn.q.weight")}:
        for param in ("weight", "bias"):
            weights[f"{prefix}.qkv.{param}"] = torch.cat([weights.pop(f"{prefix}.{p}.{param}") for p in "qkv"])
    old_file = tmp_path / "old.safetensors"
    save_file(weights, str(old_file), metadata=header)
    old_export = load(old_file)
    for n, v in loaded.model.state_dict().items():
        assert torch.equal(old_export.model.state_dict()[n], v), n
    assert main(["sample", str(old_file), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["export", str(old_file), "--out", str(tmp_path / "again.safetensors")]) == 0
    with safe_open(str(tmp_path / "again.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(keys)
