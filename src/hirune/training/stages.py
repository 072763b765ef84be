"""A run's earlier stages, trained first when they are missing.

Some runs build on others: latent diffusion on an autoencoder run (`autoencoder=RUN`), unCLIP's
decoder on a CLIP run, a text-to-image latent run on both its autoencoder and its captions.  A
preset names such a run by its default directory, `runs/<preset>` (`ldm-mnist5k` reads
`runs/kl-ae-mnist5k`).  Until that directory holds a finished run (a checkpoint at the step
its config.json asked for), `earlier_stages` returns the configs that make it -- that
preset's, in the order they must run (a stage's own stages first) -- so `hirune train
ldm-mnist5k` on a fresh clone trains the autoencoder, then the diffusion model, each with
its own progress bar: one command for a two-stage job.  An earlier stage that was
interrupted resumes from its newest complete checkpoint (`resume=true`) when the command is
run again; the last stage, the run the command names, resumes only with `resume=true` (a
folder holding a run is never trained over unasked).

Only a reference named exactly `runs/<a preset's name>` is trained this way: a path the user
chose (`autoencoder=my/ae`) must exist, and its error says how to make it.  The machine's
settings of the command (`threads`, `device`) carry over to every stage; nothing else does,
so a stage is the same run `hirune train <its preset>` would write.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import find_checkpoint
from ..families import get_family
from .config import TrainConfig, check_config
from .loading import reference_source
from .presets import PRESETS, preset_config

CARRIED = ("threads", "device")  # the command's machine settings, which every stage shares


def stage_preset(path: str) -> str | None:
    """The preset whose default run directory is `path` (`runs/<preset>`), else None."""
    p = Path(path)
    return p.name if p.parent == Path("runs") and p.name in PRESETS else None


def finished(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run that reached the steps its config.json asked for (its
    newest complete checkpoint is at that step or later)."""
    found, _ = find_checkpoint(run_dir, thorough=False)
    try:
        steps = json.loads((Path(run_dir) / "config.json").read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return found is not None and int(found.name.removeprefix("step_")) >= steps


def earlier_stages(cfg: TrainConfig, _seen: tuple[str, ...] = ()) -> list[tuple[str, TrainConfig]]:
    """(preset, config) of each unfinished run `cfg` builds on, earliest first; [] when every
    reference is there.  A stage whose folder exists resumes (`resume=True`).  A reference
    that is not a preset's default directory is left to the trainer, whose error names how to
    make it."""
    section = check_config(cfg)
    carried = {key: getattr(cfg, key) for key in CARRIED}
    stages: dict[str, TrainConfig] = {}  # preset -> config, in training order, each once
    for role, path in get_family(cfg.family).reference_paths(section, True).items():
        name, source = stage_preset(path), Path(reference_source(cfg.out, role, path))
        if name is None or source.is_file() or finished(source):  # a file: the run's own copy of it
            continue
        if name in _seen:
            raise ValueError(f"the presets' stages form a cycle: {' -> '.join((*_seen, name))}")
        stage = preset_config(name, {**carried, "resume": source.exists()})
        for earlier, earlier_cfg in earlier_stages(stage, (*_seen, name)):
            stages.setdefault(earlier, earlier_cfg)
        stages.setdefault(name, stage)
    return list(stages.items())
