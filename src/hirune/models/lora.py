"""LoRA: low-rank adapters on any hirune network (Hu et al. 2021), through `peft`.

A frozen layer y = W x (+ b) gets a trainable low-rank update,

    y = W x + (alpha / r) B A x,        A: (r, in), B: (out, r), r << min(in, out)

A drawn like a Linear's weight (Kaiming uniform), B zero, so the adapted network starts as
the base, bitwise (the update adds +0).  For a Conv2d, A is a conv of the layer's kernel
from `in` to r channels and B a 1 x 1 conv from r to `out` channels (the weight seen as an
(out, in kh kw) matrix).  peft (the library diffusers uses) does the work:
`inject_adapter_in_model` replaces each chosen layer in place by its LoRA layer (the
original becomes `<name>.base_layer`, the adapter `<name>.lora_A.<adapter>` /
`<name>.lora_B.<adapter>`) and freezes everything but the adapters.

    names = add_lora(model, rank=4)                   # q, k, v, proj / out of every attention
    add_lora(model, 8, targets="attention+mlp")       # also the transformers' feed-forward
    add_lora(model, 2, targets=r"q,blocks\\.0\\..*")    # regexes over module names
    tensors = lora_state_dict(model)                  # peft's layout: <name>.lora_A.weight, ...
    load_lora(model, tensors)
    merge(model); unmerge(model)                      # W <- W + (alpha / r) B A, and back
    with disabled(model): ...                         # the base's output, bitwise
    set_weights(model, {"default": 0.7, "thick": 0.5})   # several named adapters at once
    save_adapter(folder, model, hirune={...}); read_adapter(folder)   # peft's files

Targets (`targets`): a named set, or a comma-separated list of regular expressions over
module names, each matching a layer whose whole name it matches or whose name ends in
"." + a match (peft's rule for names: "q" is every attention's q).  Only nn.Linear and
nn.Conv2d layers are adapted.  The named sets:

    attention       the Linears q, k, v and proj (dalle: out) of every attention module
                    (the modules with `fused_linears`: self-, cross- and causal attention);
                    in a diffusers network (`hirune import`) its Attention modules' to_q,
                    to_k, to_v and to_out.0, the layers diffusers' own LoRA training adapts
    attention+mlp   also the feed-forward Linears: the transformers' `mlp` (DiT, U-ViT, the
                    prior) and `mlps` (the tiny text encoder), the MLP's fc1, fc2 (the UNet
                    has none: there it is "attention")
    all-linear      every Linear but the network's output layer (as peft's all-linear)
    all             every Linear and Conv2d but the output layer

The output layer is the network's last Linear or Conv2d (the UNet's out conv, DiT's final
linear, U-ViT's final conv, the MLP's output); its few outputs (a pixel's channels) bound
the rank any adapter of it can have.  A rank larger than a chosen layer's min(in, out) (in
kh kw for a convolution) is refused, naming the layer, as is a pattern that matches no
layer (naming the layers there are).

peft is an optional extra: `pip install 'hirune[lora]'`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from torch import Tensor, nn

TARGET_SETS = ("attention", "attention+mlp", "all-linear", "all")
ADAPTER_WEIGHTS = "adapter_model.safetensors"     # peft's file names
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."                  # peft's files name tensors from the PeftModel around the network
_ATTENTION_PROJECTIONS = ("q", "k", "v", "proj", "out")
_DIFFUSERS_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")   # diffusers' Attention
_FEED_FORWARD = re.compile(r"(?:^|.*\.)(?:mlp|mlps\.\d+)\.\d+|(?:^|.*\.)fc[12]")


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("LoRA needs the peft package: pip install 'hirune[lora]'") from e
    return peft


# --- which layers ---------------------------------------------------------------------
def layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers an adapter can go on: every nn.Linear and nn.Conv2d by module name, in
    module order (a layer that already carries adapters by its own name: its base layer)."""
    out: dict[str, nn.Module] = {}
    inside = None  # the prefix of a LoRA layer's own modules (its base layer, its adapters)
    for name, m in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if hasattr(m, "base_layer") and hasattr(m, "lora_A"):   # a peft LoRA layer
            out[name] = m.get_base_layer()
            inside = f"{name}."
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            out[name] = m
    return out


def layer_sizes(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a layer as a matrix: a Linear's features, a Conv2d's in x kh x kw and out channels."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1], layer.out_channels
    return layer.in_features, layer.out_features


def _attention_projections(model: nn.Module) -> set[str]:
    names = set()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if hasattr(m, "fused_linears"):
            names |= {prefix + c for c in _ATTENTION_PROJECTIONS if isinstance(getattr(m, c, None), nn.Module)}
        elif all(isinstance(getattr(m, c, None), nn.Linear) for c in _DIFFUSERS_PROJECTIONS[:3]):  # diffusers'
            names |= {prefix + c for c in _DIFFUSERS_PROJECTIONS[:3]}
            if isinstance(getattr(m, "to_out", None), nn.ModuleList) and isinstance(m.to_out[0], nn.Linear):
                names.add(prefix + _DIFFUSERS_PROJECTIONS[3])
    return names


def _summary(names, k: int = 24) -> str:
    """A short list of module names: digits collapsed to N (down.N.1.q), at most k of them."""
    seen = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "N", n) for n in names))
    return ", ".join(seen[:k]) + (f", ... ({len(seen)} patterns)" if len(seen) > k else "")


def target_names(model: nn.Module, targets: str = "attention") -> list[str]:
    """The names of the layers `targets` chooses (see the module docstring), in module
    order.  ValueError for a pattern that matches no Linear or Conv2d layer, naming those
    there are."""
    available = layers(model)
    if not targets or not targets.strip():
        raise ValueError(f"targets={targets!r} is not valid; valid: one of {list(TARGET_SETS)} or comma-separated "
                         f"regexes over the layers' names ({_summary(available)})")
    output = list(available)[-1] if available else None
    chosen: set[str] = set()
    if targets in ("attention", "attention+mlp"):
        chosen = _attention_projections(model) & set(available)
        if targets == "attention+mlp":
            chosen |= {n for n, m in available.items() if isinstance(m, nn.Linear) and _FEED_FORWARD.fullmatch(n)}
        if not chosen:
            raise ValueError(f"targets={targets!r} is not valid for this {type(model).__name__}: it has no attention "
                             f"layers; valid: 'all-linear', 'all' or regexes over its layers ({_summary(available)})")
    elif targets in ("all-linear", "all"):
        kinds = (nn.Linear,) if targets == "all-linear" else (nn.Linear, nn.Conv2d)
        chosen = {n for n, m in available.items() if isinstance(m, kinds) and n != output}
    else:
        for pattern in (p.strip() for p in targets.split(",")):
            try:
                regex = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"target pattern {pattern!r} is not a valid regular expression: {e}") from None
            hits = {n for n in available if regex.fullmatch(n)
                    or any(regex.fullmatch(n[i + 1:]) for i, c in enumerate(n) if c == ".")}
            if not pattern or not hits:
                raise ValueError(f"target pattern {pattern!r} matches no Linear or Conv2d layer of this "
                                 f"{type(model).__name__}; valid: one of {list(TARGET_SETS)}, or regexes over its "
                                 f"layers: {_summary(available)}")
            chosen |= hits
    return [n for n in available if n in chosen]


def check_rank(model: nn.Module, names: list[str], rank: int) -> None:
    """ValueError where `rank` exceeds min(in, out) of a chosen layer (no update of that
    layer has a larger rank), naming the layer and its sizes."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank={rank!r} is not valid; valid: an integer >= 1")
    available = layers(model)
    for name in names:
        n_in, n_out = layer_sizes(available[name])
        if rank > min(n_in, n_out):
            kind = type(available[name]).__name__
            what = "in = channels x kernel" if kind == "Conv2d" else "features"
            raise ValueError(f"rank={rank} is larger than the layer {name} allows ({kind}, in {n_in}, out {n_out}: "
                             f"{what}); valid: rank <= {min(n_in, n_out)}, or targets without that layer")


# --- adapters -------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers of `model`."""
    return [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters on `model`, in the order they were added."""
    return list(getattr(model, "peft_config", {}))


def lora_config(rank: int, alpha: float | None, names: list[str], dropout: float = 0.0):
    """peft's LoraConfig of an adapter on the layers `names` (matched exactly)."""
    peft = _peft()
    alpha = rank if not alpha else alpha
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                           target_modules="^(?:" + "|".join(re.escape(n) for n in names) + ")$")


def add_lora(model: nn.Module, rank: int = 4, alpha: float | None = None, targets: str = "attention",
             dropout: float = 0.0, name: str = "default") -> list[str]:
    """Put a LoRA adapter `name` of rank r and scale alpha / r (alpha None or 0: alpha = r,
    scale 1) on the layers `targets` chooses (see the module docstring), in place; freeze
    every other parameter.  Returns the adapted layers' names."""
    names = target_names(model, targets)
    check_rank(model, names, rank)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} is not valid; valid: 0 <= dropout < 1")
    inject(model, lora_config(rank, alpha, names, dropout), name)
    return names


def inject(model: nn.Module, config, name: str = "default") -> None:
    """peft's `inject_adapter_in_model` of `config` as adapter `name`, which becomes the
    active one (as in peft; `set_weights` activates several); refuses a name taken."""
    if name in adapter_names(model):
        raise ValueError(f"adapter name {name!r} is taken; the model has {adapter_names(model)}")
    with warnings.catch_warnings():  # a second adapter: peft warns that there will be several, which is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        _peft().inject_adapter_in_model(config, model, adapter_name=name)
    for layer in lora_layers(model):  # on every layer, also those the new adapter does not touch
        layer.set_adapter([name])


def lora_state_dict(model: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """The tensors of adapter `name` in peft's layout: `<layer>.lora_A.weight`, `<layer>.lora_B.weight`."""
    _check_name(model, name)
    return dict(_peft().get_peft_model_state_dict(model, adapter_name=name))


def load_lora(model: nn.Module, tensors: Mapping[str, Tensor], name: str = "default") -> None:
    """Put `tensors` (`lora_state_dict`'s layout) into adapter `name`; ValueError unless
    their names and shapes are exactly the adapter's."""
    own = lora_state_dict(model, name)
    if set(tensors) != set(own):
        raise ValueError(f"the tensors do not fit adapter {name!r}: missing {sorted(set(own) - set(tensors))[:4]}, "
                         f"unexpected {sorted(set(tensors) - set(own))[:4]}")
    for key, value in tensors.items():
        if value.shape != own[key].shape:
            raise ValueError(f"adapter tensor {key} has shape {tuple(value.shape)}, the layer's is "
                             f"{tuple(own[key].shape)}")
    _peft().set_peft_model_state_dict(model, dict(tensors), adapter_name=name)


def _check_name(model: nn.Module, name: str) -> None:
    if name not in adapter_names(model):
        raise ValueError(f"no adapter {name!r} on this model; it has {adapter_names(model) or 'none'}")


def merge(model: nn.Module) -> None:
    """W <- W + w (alpha / r) B A for every active adapter (at its weight w): the adapted
    network at the cost of the base's.  `unmerge` takes it out again (up to rounding)."""
    for layer in lora_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model):
        layer.unmerge()


def is_merged(model: nn.Module) -> bool:
    return any(layer.merged for layer in lora_layers(model))


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base network for the duration: every LoRA layer runs its base layer alone, so
    the output is the base's bitwise.  Refused on a merged model (its weights hold the
    adapters; `unmerge` first)."""
    if is_merged(model):
        raise ValueError("the adapters are merged into the weights; unmerge(model) before disabling them")
    flags = {p: p.requires_grad for p in model.parameters()}
    for layer in lora_layers(model):
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in lora_layers(model):
            layer.enable_adapters(True)
        for p, flag in flags.items():
            p.requires_grad_(flag)


def set_weights(model: nn.Module, weights: Mapping[str, float]) -> None:
    """Make the adapters named in `weights` the active ones, each at its weight w (its
    update scaled by w alpha / r): y = W x + sum_i w_i (alpha_i / r_i) B_i A_i x.  Unknown
    names are refused; requires_grad is left as it was."""
    unknown = sorted(set(weights) - set(adapter_names(model)))
    if unknown:
        raise ValueError(f"no adapter {unknown[0]!r} on this model; it has {adapter_names(model) or 'none'}")
    if is_merged(model):
        raise ValueError("the adapters are merged into the weights; unmerge(model) before changing their weights")
    flags = {p: p.requires_grad for p in model.parameters()}
    for layer in lora_layers(model):
        layer.set_adapter(list(weights))
        for name, w in weights.items():
            layer.set_scale(name, float(w))
    for p, flag in flags.items():
        p.requires_grad_(flag)


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- peft's files ---------------------------------------------------------------------
def save_adapter(folder: str | Path, model: nn.Module, name: str = "default", hirune: dict | None = None,
                 tensors: Mapping[str, Tensor] | None = None) -> Path:
    """Write adapter `name` as peft's `save_pretrained` does -- adapter_model.safetensors
    (keys base_model.model.<layer>.lora_A.weight, ...) and adapter_config.json (LoraConfig's
    fields) -- with a "hirune" entry in the config (the base run it adapts).  `tensors`:
    the adapter's tensors in `lora_state_dict`'s layout, if not the model's own (the EMA's).
    `PeftModel.from_pretrained(network, folder)` reads it.  Each file is written under a
    temporary name and renamed into place."""
    from safetensors.torch import save_file

    _check_name(model, name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = lora_state_dict(model, name) if tensors is None else tensors
    config = json.loads(json.dumps(model.peft_config[name].to_dict(), default=str))
    config["peft_type"] = "LORA"
    if hirune is not None:
        config["hirune"] = hirune
    tmp = folder / f".{ADAPTER_WEIGHTS}.tmp"
    save_file({PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={"format": "pt"})
    tmp.replace(folder / ADAPTER_WEIGHTS)
    tmp = folder / f".{ADAPTER_CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    tmp.replace(folder / ADAPTER_CONFIG)
    return folder


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, Tensor], dict]:
    """(LoraConfig fields, tensors in `lora_state_dict`'s layout, the "hirune" entry or {})
    of an adapter folder written by `save_adapter` or peft's `save_pretrained`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not an adapter folder (it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder / ADAPTER_CONFIG} is a {config.get('peft_type')} adapter; valid: LORA")
    hirune = config.pop("hirune", None) or {}
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    return config, tensors, hirune


def add_saved_lora(model: nn.Module, config: dict, tensors: Mapping[str, Tensor], name: str) -> list[str]:
    """Put an adapter read by `read_adapter` on `model` as `name`: its layers (its
    target_modules), rank and alpha, then its tensors.  Returns the adapted layers' names."""
    import dataclasses

    peft = _peft()
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    lora = peft.LoraConfig(**{k: v for k, v in config.items() if k in fields})
    target = lora.target_modules
    names = [n for n in layers(model) if (re.fullmatch(target, n) if isinstance(target, str)
                                          else any(n == t or n.endswith("." + t) for t in target))]
    if not names:
        raise ValueError(f"the adapter's layers ({str(target)[:80]}) are not in this {type(model).__name__}")
    check_rank(model, names, lora.r)
    inject(model, lora, name)
    load_lora(model, tensors, name)
    return names
