"""Training, and the run directories it writes.

    config.py    TrainConfig: the shared settings and the family's section; key=value parsing
    trainer.py   Trainer: a run being trained (family, strategy, AdamW, EMA), its optimizer
                 step and its checkpoints
    loop.py      train(cfg): the loop, for every family
    loading.py   load(path): a trained run for inference, light (no optimizer, no dataset)
    export.py    one-file weights of a run (`hirune export`), which `load` reads too
    ema.py       the weights' exponential moving average
    presets.py   named configs (`hirune presets`)
    stages.py    the runs a preset builds on (its autoencoder, ...), trained first until finished
    speed.py     the optimizer step's speed beside diffusers' (`hirune bench train`)
    measure.py   what `hirune plan` measures of a run: parameters, activations, step time
"""

from .config import TrainConfig, parse_overrides
from .loading import load
from .loop import train
from .presets import PRESETS, preset_config
from .trainer import Trainer, lr_at, micro_batch_indices

__all__ = ["PRESETS", "TrainConfig", "Trainer", "load", "lr_at", "micro_batch_indices", "parse_overrides",
           "preset_config", "train"]
