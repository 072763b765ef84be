"""Where a training step's memory goes, counted from the tensors themselves.

Four kinds of bytes live during training (Rajbhandari et al. 2020, "ZeRO", sec. 3):

- weights: the parameters, 4 bytes each in float32;
- gradients: `p.grad`, created by the first backward pass, freed by `zero_grad(set_to_none=True)`;
- optimizer state: AdamW's `exp_avg` and `exp_avg_sq` (2 x 4 bytes a parameter, plus a one-
  element `step`), created lazily by the first `optimizer.step()`, so they appear only after
  step 1;
- activations: what autograd saves in the forward pass for the backward pass, seen here
  through torch.autograd.graph.saved_tensors_hooks and freed when backward has used it.

`SavedTensors` is the counter (each storage once, as `training/measure.py` counts them: views of
one tensor share it; the model's own weights and buffers are not activations).  `profile` trains
a few AdamW steps of `gpt.GPT` and records the four at each phase of each step; on a CUDA device
it adds torch.cuda.memory_allocated, the allocator's own total.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

PHASES = ("forward", "backward", "step", "zero_grad")


class SavedTensors:
    """Inside `with SavedTensors(model):` every tensor autograd saves is recorded once per storage,
    with the block (`model.blocks[i]`) whose forward saved it (-1: outside the blocks).

    Checkpointed modules (`model.checkpointed()`) save nothing through these hooks: torch's
    checkpoint keeps their *inputs* in its own closure and recomputes the rest in the backward
    pass, so their inputs are recorded here by a forward pre-hook instead."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.seen: dict[int, tuple[int, int]] = {}         # storage -> (bytes, block or -1)
        self.refs: dict[int, list[weakref.ref]] = {}        # storage -> the saved tensors that use it
        self._inside: list[int] = []
        self._handles: list = []

    def _record(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        key = t.untyped_storage().data_ptr()
        if key in self.exclude:
            return
        if key not in self.seen:
            self.seen[key] = (t.untyped_storage().nbytes(), self._inside[-1] if self._inside else -1)
        self.refs.setdefault(key, []).append(weakref.ref(t))

    def _pack(self, t):
        self._record(t)
        return t

    def __enter__(self) -> SavedTensors:
        def enter(i):
            def hook(module, args) -> None:   # hooks return None: inputs and outputs unchanged
                self._inside.append(i)
            return hook

        def leave(module, args, output) -> None:
            self._inside.pop()

        def keep_inputs(module, args) -> None:
            for a in args:
                self._record(a)

        for i, block in enumerate(getattr(self.model, "blocks", [])):
            self._handles += [block.register_forward_pre_hook(enter(i)), block.register_forward_hook(leave)]
        checkpointed = self.model.checkpointed() if hasattr(self.model, "checkpointed") else []
        for module in checkpointed:   # registered after the block hooks: the block is already entered
            self._handles.append(module.register_forward_pre_hook(keep_inputs))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def total(self) -> int:
        return sum(b for b, _ in self.seen.values())

    def per_block(self) -> list[int]:
        out = [0] * len(getattr(self.model, "blocks", []))
        for nbytes, block in self.seen.values():
            if block >= 0:
                out[block] += nbytes
        return out

    def alive(self) -> int:
        """Bytes of the recorded storages some saved tensor still holds (0 once backward freed them)."""
        return sum(self.seen[k][0] for k, refs in self.refs.items() if any(r() is not None for r in refs))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in optimizer.state (AdamW: exp_avg, exp_avg_sq, step per parameter)."""
    return sum(tensor_bytes(s.values()) for s in optimizer.state.values())


def profile(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128, seq: int = 64, batch: int = 8,
            steps: int = 3, lr: float = 1e-3, device: str = "cpu", seed: int = 0, set_to_none: bool = True,
            retain_graph: bool = False) -> list[dict]:
    """Train `steps` AdamW steps of the GPT; one row per phase: bytes of weights, gradients,
    optimizer state and live saved activations (and torch.cuda.memory_allocated on CUDA).
    `set_to_none=False` (zeroed gradients kept) and `retain_graph=True` (the graph and its
    saved tensors kept after backward) are the two usual ways of holding memory by mistake."""
    from .gpt import GPT, GPTConfig, loss_fn, random_tokens

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = GPT(GPTConfig(vocab=vocab, seq_len=seq, layers=layers, hidden=hidden, heads=heads)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    tokens = random_tokens(model.config, batch, seed=seed).to(dev)
    rows: list[dict] = []

    def snapshot(step: int, phase: str, saved: SavedTensors | None) -> None:
        row = {"step": step, "phase": phase, "weights": tensor_bytes(model.parameters()),
               "gradients": tensor_bytes(p.grad for p in model.parameters()),
               "optimizer": optimizer_bytes(optimizer), "activations": saved.alive() if saved else 0}
        row["total"] = row["weights"] + row["gradients"] + row["optimizer"] + row["activations"]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            row["cuda_allocated"] = torch.cuda.memory_allocated(dev)
        rows.append(row)

    snapshot(0, "built", None)
    for step in range(1, steps + 1):
        with SavedTensors(model) as saved:
            loss = loss_fn(model, tokens)
        snapshot(step, "forward", saved)
        loss.backward(retain_graph=retain_graph)
        kept = loss if retain_graph else None   # a retained graph lives as long as its loss
        del loss
        snapshot(step, "backward", saved)
        optimizer.step()
        snapshot(step, "step", saved)
        optimizer.zero_grad(set_to_none=set_to_none)
        snapshot(step, "zero_grad", saved)
        del kept
    return rows


def surprises(rows: list[dict]) -> list[str]:
    """What in a profile contradicts the notes: optimizer state before the first step or not
    2 x 4 bytes a parameter (+ the step counters) after it; gradients alive after zero_grad or
    missing after backward; saved activations alive after backward or none after forward."""
    weights = rows[0]["weights"]
    out = []
    for r in rows:
        where = f"step {r['step']} {r['phase']}"
        before_first_step = r["step"] == 0 or (r["step"] == 1 and r["phase"] in ("forward", "backward"))
        if before_first_step and r["optimizer"]:
            out.append(f"{where}: optimizer state {r['optimizer']} bytes before the first step")
        if not before_first_step and not 2 * weights <= r["optimizer"] < 2 * weights + 4096:
            out.append(f"{where}: optimizer state {r['optimizer']} bytes, not 2 x {weights} (+ step counters)")
        if r["phase"] in ("backward", "step") and r["gradients"] != weights:
            out.append(f"{where}: gradients {r['gradients']} bytes, not {weights}")
        if r["phase"] in ("built", "forward", "zero_grad") and r["gradients"]:
            out.append(f"{where}: gradients {r['gradients']} bytes still held")
        if r["phase"] == "forward" and not r["activations"]:
            out.append(f"{where}: no saved activations")
        if r["phase"] not in ("forward",) and r["activations"]:
            out.append(f"{where}: {r['activations']} bytes of saved activations still alive")
    return out


KINDS = ("weights", "gradients", "optimizer", "activations")


def playbook(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128, seq: int = 64, batch: int = 8,
             steps: int = 3, device: str = "cpu"):
    from .report import Report

    rows = profile(layers, hidden, heads, vocab, seq, batch, steps, device=device)
    params = rows[0]["weights"] // 4
    odd = surprises(rows)
    first_state = next(r for r in rows if r["optimizer"])
    columns = ["step", "phase", *KINDS, "total"] + (["cuda_allocated"] if "cuda_allocated" in rows[0] else [])
    notes = [f"{params} float32 parameters ({rows[0]['weights']} bytes); AdamW's state appears at step "
             f"{first_state['step']} ({first_state['phase']}): {first_state['optimizer']} bytes = 2 x 4 x parameters "
             f"+ 4 for each tensor's step counter",
             "zero_grad(set_to_none=True) frees the gradients; backward frees the saved activations.",
             "every phase as the notes say" if not odd else "UNEXPECTED: " + "; ".join(odd),
             f"micro-batch {batch} x {seq} tokens, GPT L={layers} h={hidden} a={heads} V={vocab}, device {device}"]
    return Report("memory-profile", "bytes held at each phase of the first AdamW steps (counted from the tensors)",
                  columns, [[r[c] for c in columns] for r in rows], notes, {"rows": rows},
                  lambda path: plot(rows, path))


def plot(rows: list[dict], path) -> None:
    """Stacked bars over the timeline: weights, gradients, optimizer state, activations."""
    from .report import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 1.5), 4.0))
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for kind in KINDS:
        mib = [r[kind] / 2**20 for r in rows]
        ax.bar(x, mib, bottom=bottom, label=kind)
        bottom = [b + m for b, m in zip(bottom, mib)]
    if "cuda_allocated" in rows[0]:
        ax.plot(x, [r["cuda_allocated"] / 2**20 for r in rows], "k.-", label="cuda memory_allocated")
    ax.set_xticks(list(x), [f"{r['step']}:{r['phase']}" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)
    ax.set_title("memory over the first AdamW steps", fontsize=9)
    save(fig, path)
