"""Moving digits: short clips of MNIST 5k digits sliding across a small canvas and bouncing
off its edges -- Moving MNIST (Srivastava et al. 2015, "Unsupervised Learning of Video
Representations using LSTMs", sec. 3: 64 x 64 frames, two 28 x 28 digits, random velocities,
bouncing) at digit scale and with motions a caption can name.

    canvas     32 x 32, background -1; each digit is its 28 x 28 mnist5k image downscaled to
               16 x 16 (bilinear, antialiased) and rounded back to the 256 levels, so its
               top-left corner takes positions 0..ROOM = 16 on each axis
    direction  left / right / up / down (DIRECTIONS), one axis at a time.  No diagonals: a
               diagonal digit bounces off two edges at different frames, so its path has no
               one name ("bouncing down-left" off the left edge only?), and the measure
               (`evaluation.video.motion_direction`) reads four well-separated classes
    speed      slow 1 or fast 2 px per frame (SPEEDS)
    bouncing   a digit that would leave the canvas is reflected: the velocity component
               along its axis reverses (the path is a triangle wave between the edges)
    frames     T = 4k + 1 (9 or 17 registered), the frame counts a causal video VAE with
               4x temporal compression maps to k + 1 latents (CogVideoX, Yang et al. 2024,
               sec. 2.1)

What "moving left" means for a clip that bounces: the direction of its first leg, the one
its caption names ("a seven bouncing left": it goes left, hits the left edge, comes back).
The start is drawn so that this leg is long and the clip's largest excursion from where it
began: the digit travels >= MIN_EXCURSION px towards the named edge before any turn, and
less far the other way (`start_distances`).  The measure reads the first leg (the
displacement when the digit first gets 3 px from its start: `evaluation.video.
motion_direction`), so it recovers the caption on every clip, bounced or not; and most of
what a viewer sees of the clip goes the named way.

Each clip's parameters are kept as per-example integer `attributes` (`ArrayDataset`):
label, direction (index into DIRECTIONS), speed (px / frame), bounced (0 / 1), thickness
(0 thin / 1 regular / 2 thick: the digit's ink ranked within its class over all 5000, as
`data.captions` measures it), row and col (the digit's top-left corner in the first frame)
and digit (its row in mnist5k); a second digit's with the suffix "_2".

Determinism and splits: the parameters of every clip are drawn once, from `seed`, for all
5000 mnist5k digits (`clips_per_digit` clips each, in file order), and a split keeps the
clips of its own digits (mnist5k's fixed split: train clips show train digits only, test
clips test digits only; a second digit is drawn from the first one's split).  A clip is
therefore the same whichever split it is loaded in.  Generating the 4500 training clips of
9 frames takes well under a second after mnist5k's file is read (~1 s, once per process).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import ArrayDataset, check_split

CANVAS, DIGIT = 32, 16
ROOM = CANVAS - DIGIT               # positions 0..ROOM of a digit's top-left corner on each axis
DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}   # (d row, d col) per px
SPEEDS = (1, 2)                     # slow, fast: px per frame
SPEED_NAMES = ("slow", "fast")
MIN_EXCURSION = 4                   # px the digit travels towards the named edge, at least
SEED = 20150                        # the registered datasets' seed
CLASS_NAMES = tuple(str(c) for c in range(10))


def check_frames(frames, minimum: int = 5) -> int:
    """A clip's frame count: 4k + 1 >= minimum (what a 4x causal temporal VAE compresses)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < minimum or (frames - 1) % 4:
        first = max(1, minimum + (-(minimum - 1)) % 4)
        raise ValueError(f"frames={frames!r} is not valid; valid: 4k + 1 frames >= {minimum} "
                         f"({', '.join(str(first + 4 * i) for i in range(4))}, ...)")
    return frames


def downscale_digits(images: Tensor) -> Tensor:
    """(N, 1, 28, 28) digits in [-1, 1] -> (N, 1, 16, 16): bilinear with antialiasing (a
    convex combination of pixels, so the range holds), then rounded to the 256 levels."""
    small = F.interpolate(images, size=(DIGIT, DIGIT), mode="bilinear", antialias=True, align_corners=False)
    return to_levels(small)


def to_levels(x: Tensor) -> Tensor:
    """Values in [-1, 1] rounded to the nearest of the 256 levels k / 127.5 - 1 (computed in
    float64 and rounded once, as mnist5k's pixels are)."""
    k = torch.round((x.double().clamp(-1, 1) + 1) * 127.5)
    return (k / 127.5 - 1).to(torch.float32)


# --- the path along the motion's axis -----------------------------------------------------
def wall_distances(distance: int, speed: int, frames: int) -> list[int]:
    """The distance (px) from the digit to the edge it heads for, at each frame: distance -
    speed * t, reflected off both edges (a triangle wave of period 2 * ROOM)."""
    out = []
    for t in range(frames):
        q = (distance - speed * t) % (2 * ROOM)
        out.append(q if q <= ROOM else 2 * ROOM - q)
    return out


def bounces(distance: int, speed: int, frames: int) -> bool:
    """Whether the digit reaches past the edge it heads for within the clip (and turns back)."""
    return distance - speed * (frames - 1) < 0


@functools.lru_cache(maxsize=None)
def start_distances(frames: int, speed: int, bounced: bool) -> tuple[int, ...]:
    """The start distances d = 0..ROOM to the named edge that a clip may begin at: it
    bounces (or not) as asked, travels >= MIN_EXCURSION px towards the named edge, and its
    largest excursion the other way is shorter than that (see the module docstring).  Empty
    where no start does (fast clips of 17 frames always bounce)."""
    out = []
    for d in range(ROOM + 1):
        toward = [d - w for w in wall_distances(d, speed, frames)]   # displacement towards the named edge
        named, other = max(toward), max(-e for e in toward)
        if bounces(d, speed, frames) == bounced and named >= MIN_EXCURSION and named > other:
            out.append(d)
    return tuple(out)


def positions(direction: Tensor, speed: Tensor, distance: Tensor, across: Tensor, frames: int) -> tuple[Tensor, Tensor]:
    """(rows, cols), each (N, T) int64: the top-left corner of each clip's digit per frame,
    for (N,) direction indices, speeds (px / frame), start distances to the named edge and
    positions across the motion's axis."""
    table = torch.tensor([[wall_distances(d, s, frames) for d in range(ROOM + 1)] for s in SPEEDS])  # (2, ROOM+1, T)
    wall = table[speed - 1, distance]                                               # (N, T)
    toward_low = (direction == DIRECTIONS.index("left")) | (direction == DIRECTIONS.index("up"))
    along = torch.where(toward_low[:, None], wall, ROOM - wall)
    horizontal = (direction <= DIRECTIONS.index("right"))[:, None]
    still = across[:, None].expand_as(along)
    return torch.where(horizontal, still, along), torch.where(horizontal, along, still)


def draw_motions(n: int, frames: int, generator: torch.Generator) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """n clips' motions: their attributes, each (n,) int64 -- direction, speed, bounced,
    row, col (the first frame's corner) -- and the corner at every frame, rows and cols
    (n, T).  Direction, speed and a wish to bounce are uniform; the wish is kept where some
    start allows it (`start_distances`); the start is uniform among those."""
    direction = torch.randint(len(DIRECTIONS), (n,), generator=generator)
    speed = torch.randint(len(SPEEDS), (n,), generator=generator) + 1
    wish = torch.randint(2, (n,), generator=generator).bool()
    across = torch.randint(ROOM + 1, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    distance = torch.empty(n, dtype=torch.long)
    for s in SPEEDS:
        for b in (False, True):
            starts = start_distances(frames, s, b) or start_distances(frames, s, not b)
            mine = (speed == s) & (wish == b)
            pick = (u[mine] * len(starts)).long().clamp_max(len(starts) - 1)
            distance[mine] = torch.tensor(starts)[pick]
    rows, cols = positions(direction, speed, distance, across, frames)
    bounced = (distance - speed * (frames - 1) < 0).long()
    attrs = {"direction": direction, "speed": speed, "bounced": bounced, "row": rows[:, 0], "col": cols[:, 0]}
    return attrs, rows, cols


def render(digits: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Clips (N, 1, T, 32, 32) on the background -1 from one or more layers (digit images
    (N, 1, 16, 16), rows (N, T), cols (N, T)), overlaid with max (MNIST digits are light
    ink on black, so max keeps both)."""
    n, frames = digits[0][1].shape
    canvas = torch.full((n, frames, CANVAS * CANVAS), -1.0)
    offsets = (torch.arange(DIGIT)[:, None] * CANVAS + torch.arange(DIGIT)[None, :]).flatten()   # (256,)
    for images, rows, cols in digits:
        ink = images.reshape(n, DIGIT * DIGIT)
        for t in range(frames):
            index = (rows[:, t] * CANVAS + cols[:, t])[:, None] + offsets
            canvas[:, t].scatter_reduce_(1, index, ink, reduce="amax")
    return canvas.view(n, 1, frames, CANVAS, CANVAS)


# --- the datasets -------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _sources():
    """All 5000 mnist5k digits, their labels, thickness (over all 5000, by class) and
    whether each is a test digit (computed once a process; callers only index them)."""
    from .captions import attributes
    from .images import mnist5k

    full, test = mnist5k("all"), mnist5k("test")
    thickness, _ = attributes(full.data, full.labels)
    is_test = torch.zeros(len(full), dtype=torch.bool)
    is_test[test.indices] = True
    return full, thickness, is_test


def _selected(is_test: Tensor, split: str) -> Tensor:
    return torch.ones_like(is_test) if split == "all" else is_test == (split == "test")


def moving_digits(split: str = "train", frames: int = 9, digits: int = 1, clips_per_digit: int = 1,
                  seed: int = SEED, name: str | None = None) -> ArrayDataset:
    """Moving-digit clips (N, 1, T, 32, 32) in [-1, 1], labelled by the (first) digit, with
    their `attributes` (module docstring): N = clips_per_digit x (4500 | 500 | 5000) for
    train | test | all.  digits: 1, or 2 (two digits overlaid with max)."""
    check_split(split)
    check_frames(frames)
    if digits not in (1, 2):
        raise ValueError(f"digits={digits!r} is not valid; valid: 1, 2")
    if isinstance(clips_per_digit, bool) or not isinstance(clips_per_digit, int) or clips_per_digit < 1:
        raise ValueError(f"clips_per_digit={clips_per_digit!r} is not valid; valid: an integer >= 1")
    full, thickness, is_test = _sources()
    g = torch.Generator().manual_seed(seed)
    n = len(full) * clips_per_digit
    source = torch.arange(n) // clips_per_digit
    layers = [(source, *draw_motions(n, frames, g))]
    if digits == 2:
        u = torch.rand(n, generator=g, dtype=torch.float64)
        partner = torch.empty(n, dtype=torch.long)
        for test in (False, True):   # a partner from the first digit's own split
            pool, mine = torch.nonzero(is_test == test).flatten(), is_test[source] == test
            partner[mine] = pool[(u[mine] * len(pool)).long().clamp_max(len(pool) - 1)]
        layers.append((partner, *draw_motions(n, frames, g)))
    keep = _selected(is_test, split)[source]
    small = downscale_digits(full.data)
    attrs, drawn = {}, []
    for k, (src, motion, rows, cols) in enumerate(layers):
        src = src[keep]
        drawn.append((small[src], rows[keep], cols[keep]))
        suffix = "" if k == 0 else f"_{k + 1}"
        mine = {"label": full.labels[src], **{key: v[keep] for key, v in motion.items()},
                "thickness": thickness[src], "digit": src}
        attrs.update({f"{key}{suffix}": v for key, v in mine.items()})
    return ArrayDataset(name=name or _default_name(frames, digits), kind="video", data=render(drawn),
                        labels=attrs["label"].clone(), num_classes=10, split=split, source=full.source,
                        indices=source[keep], class_names=CLASS_NAMES, levels=256, attributes=attrs)


def _default_name(frames: int, digits: int) -> str:
    return "moving-mnist5k" + ("" if frames == 9 else f"-{frames}") + ("-two" if digits == 2 else "")


def pooled_clips(split: str = "train", frames: int = 9, seed: int = SEED) -> ArrayDataset:
    """The same clips average-pooled 2 x 2 in space: (N, 1, T, 16, 16), 1021 levels (means of
    four 8-bit levels), the same attributes (in 32 x 32 canvas pixels) and captions.  The low
    resolution of progressive training (CogVideoX sec. 3.2: low, then high resolution); the
    32 x 32 clips' video VAE encodes them too (it is convolutional)."""
    full = moving_digits(split, frames=frames, seed=seed)
    name = f"{_default_name(frames, 1)}-16"
    return dataclasses.replace(full, name=name, data=F.avg_pool3d(full.data, (1, 2, 2)), levels=4 * 255 + 1)


def still_frames(split: str = "train", seed: int = SEED) -> ArrayDataset:
    """The same 16 x 16 digits as one-frame videos (N, 1, 1, 32, 32) ("an image is a
    one-frame video": frame packing, a video VAE's image path), each at a uniform position
    (row, col in 0..ROOM), with attributes label, thickness, row, col, digit."""
    check_split(split)
    full, thickness, is_test = _sources()
    g = torch.Generator().manual_seed(seed)
    rows, cols = (torch.randint(ROOM + 1, (len(full),), generator=g) for _ in range(2))
    keep = torch.nonzero(_selected(is_test, split)).flatten()
    small = downscale_digits(full.data[keep])
    data = render([(small, rows[keep, None], cols[keep, None])])
    attrs = {"label": full.labels[keep], "thickness": thickness[keep], "row": rows[keep], "col": cols[keep],
             "digit": keep}
    return ArrayDataset(name="mnist5k-frames", kind="video", data=data, labels=full.labels[keep].clone(),
                        num_classes=10, split=split, source=full.source, indices=keep, class_names=CLASS_NAMES,
                        levels=256, attributes=attrs)


def still_images(split: str = "train", seed: int = SEED) -> ArrayDataset:
    """`still_frames` as images (N, 1, 32, 32) with the same attributes: the text-to-image
    data of a video model that starts from an image model (CogVideo inherits CogView2).  An
    image dataset, so every image family (autoencoders, dalle) trains on it; its captions
    are the clips' own ("a thick seven", `data.video_captions`), which say nothing of motion."""
    frames = still_frames(split, seed)
    return dataclasses.replace(frames, name="moving-mnist5k-stills", kind="image", data=frames.data[:, :, 0])
