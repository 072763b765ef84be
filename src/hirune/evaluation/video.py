"""Does a generated clip of a moving digit show the digit and the motion its caption names?
Measures of videos (N, 1, T, 32, 32) in [-1, 1] on the moving-digit canvas (`data.moving`;
one digit per clip):

    frame accuracy        the share of frames the shipped mnist5k evaluator
                          (`metrics.evaluator`) reads as the named digit: each frame's digit
                          cut out around its ink's centre of mass and resized to the 28 x 28
                          the evaluator reads (`frame_cutouts`)
    direction accuracy    the share of clips whose motion (`motion_direction`: the centre of
                          mass's path) is the named direction
    temporal consistency  the share of clips whose per-frame class read is the same in every
                          frame (the digit does not morph into another)
    smooth motion         the share of clips whose centre of mass never jumps more than
                          MAX_STEP px between frames (the real clips move <= 2 px per frame;
                          frames out of order jump).  Alone it says little -- a still digit
                          and pure noise are smooth -- so read it beside the direction
    Frechet distance      per frame, in the evaluator's features of the cut-out frames,
                          against the real test clips' frames (FVD needs an I3D network that
                          cannot be fetched here; this is the frame-wise FID of the shipped
                          evaluator, blind to motion, which the other measures cover)

`video_report` gives them all beside the same numbers on the real test clips (the real-vs-
real reference, as `evaluation.quality` gives for images): on the real clips the direction
accuracy and smooth motion are exactly 1, the frame accuracy and consistency the
evaluator's (its test accuracy on mnist5k is 98.6%; the cut-outs lose a little to the
16 x 16 round trip).

What "moving left" means for a clip that bounces: the direction of its first leg, as its
caption says ("a seven bouncing left": left to the edge, then back; `data.moving`).
`motion_direction` reads exactly that: the displacement of the centre of mass at the first
frame it is LEG px from where it started, named by its larger component -- "none" when it
never gets that far.  Every real clip's first leg is >= 4 px long, so it is recovered on all
of them; a clip played backwards starts with what was its last leg and is read so.

Clips of a lower resolution (progressive training's 16 x 16, `moving-mnist5k-16`) are
measured on the canvas they were pooled from: each pixel back to its 2 x 2 block (nearest)
first.  An 8 x 8 digit holds less than a 16 x 16 one: the evaluator reads 0.786 of the real
16 x 16 test clips' frames right (0.974 at 32 x 32; upsampled bilinearly instead, 0.577).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.moving import CANVAS, DIGIT, DIRECTIONS

LEG = 3.0           # px from the start that make the first leg (a still or jittering clip never gets there: none)
MAX_STEP = 3.0      # px per frame: the largest step of a smooth clip (the fast digits move 2)
INK = -0.8          # the centre of mass weighs the values above this (on real cut-outs: 97.4% read right;
                    # above -1: 97.8%, but a sample's background noise pulls it; above 0: 96.6%, thin digits off-centre)
MNIST_CENTRE = 14.0  # the centre of mass of a 28 x 28 MNIST digit (index coordinates; measured: 14.0 +- 0.3)
EVALUATOR = "mnist5k"


def _check_videos(videos: Tensor) -> Tensor:
    if videos.dim() != 5 or videos.shape[1] != 1:
        raise ValueError(f"videos must be (N, 1, T, H, W) in [-1, 1], got shape {tuple(videos.shape)}")
    return videos.detach().float().cpu()


def on_canvas(videos: Tensor) -> Tensor:
    """Clips (N, 1, T, H, H) on the CANVAS: as they are at H = CANVAS, each pixel repeated
    (nearest) for an H that divides it (see the module docstring)."""
    x = _check_videos(videos)
    if x.shape[3] != x.shape[4] or CANVAS % x.shape[3]:
        raise ValueError(f"videos must be (N, 1, T, H, H) in [-1, 1] with H dividing {CANVAS} (the moving-digit "
                         f"canvas), got shape {tuple(videos.shape)}")
    if x.shape[3] != CANVAS:
        x = F.interpolate(x, size=(x.shape[2], CANVAS, CANVAS), mode="nearest")
    return x


def centres_of_mass(videos: Tensor) -> Tensor:
    """(N, T, 2) float64 (row, col) of each frame's ink, in pixel-index coordinates: each
    pixel weighted by its value above INK (10% brightness), so that a generated clip's faint
    background noise does not pull it to the middle; a frame without ink: the canvas centre."""
    x = (_check_videos(videos)[:, 0].double() - INK).clamp_min(0)             # (N, T, H, W)
    h, w = x.shape[-2:]
    mass = x.sum((-2, -1))
    rows = (x.sum(-1) * torch.arange(h, dtype=x.dtype)).sum(-1)
    cols = (x.sum(-2) * torch.arange(w, dtype=x.dtype)).sum(-1)
    com = torch.stack([rows, cols], -1) / mass.clamp_min(1e-12)[..., None]
    centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=x.dtype)
    return torch.where((mass > 0)[..., None], com, centre)


def motion_direction(videos: Tensor, leg: float = LEG) -> Tensor:
    """(N,) int64: the index in DIRECTIONS (left, right, up, down) each clip moves in first,
    -1 for none: the displacement of the centre of mass from the first frame to the first
    frame at least `leg` px away from it (the first leg, also of a clip that bounces), named
    by its larger component; none when no frame gets that far."""
    com = centres_of_mass(on_canvas(videos))
    shift = com - com[:, :1]                                                   # (N, T, 2)
    away = shift.norm(dim=-1) >= leg                                           # (N, T)
    first = away.to(torch.uint8).argmax(1)                                     # the first frame away (first max)
    d = shift[torch.arange(len(shift)), first]                                 # (N, 2): (d row, d col)
    horizontal = d[:, 1].abs() >= d[:, 0].abs()
    out = torch.where(horizontal, torch.where(d[:, 1] < 0, DIRECTIONS.index("left"), DIRECTIONS.index("right")),
                      torch.where(d[:, 0] < 0, DIRECTIONS.index("up"), DIRECTIONS.index("down")))
    return torch.where(away.any(1), out, -1)


def smooth_motion(videos: Tensor, max_step: float = MAX_STEP) -> Tensor:
    """(N,) bool: whether the centre of mass moves at most `max_step` px between any two
    consecutive frames."""
    com = centres_of_mass(on_canvas(videos))
    steps = (com[:, 1:] - com[:, :-1]).norm(dim=-1)
    return (steps <= max_step).all(1)


def frame_cutouts(videos: Tensor, size: int = 28) -> Tensor:
    """(N * T, 1, size, size): every frame's digit, the DIGIT x DIGIT window centred on its
    ink's centre of mass resized (bilinear) to size x size, placed so that the centre of mass
    lands where MNIST puts it (MNIST_CENTRE); outside the canvas: background -1."""
    x = on_canvas(videos)
    n, _, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(n * t, 1, h, w)
    com = centres_of_mass(x).reshape(n * t, 2).float()
    u = (torch.arange(size, dtype=torch.float32) - MNIST_CENTRE * size / 28) * DIGIT / size   # canvas px offsets
    rows, cols = com[:, 0, None] + u, com[:, 1, None] + u                                      # (M, size)
    grid = torch.stack([((2 * cols + 1) / w - 1)[:, None, :].expand(-1, size, -1),
                        ((2 * rows + 1) / h - 1)[:, :, None].expand(-1, -1, size)], -1)       # (M, size, size, 2): x, y
    return F.grid_sample(frames + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def frame_classes(videos: Tensor, net=None) -> tuple[Tensor, Tensor]:
    """The evaluator's read of every frame: classes (N, T) int64 and features (N * T, 128)."""
    from ..metrics.evaluator import features_and_logits, load_evaluator

    net = net or load_evaluator(EVALUATOR)
    n, t = videos.shape[0], videos.shape[2]
    feats, logits = features_and_logits(net, frame_cutouts(videos))
    return logits.argmax(1).view(n, t), feats


def _motion_indices(motions, n: int) -> Tensor:
    from ..data.video_captions import motion_index

    if isinstance(motions, Tensor):
        out = motions.long().cpu().flatten()
    else:
        out = torch.tensor([motion_index(m) for m in motions], dtype=torch.long)
    if len(out) != n:
        raise ValueError(f"{len(out)} motions for {n} videos; give one per video")
    return out


def video_measures(videos: Tensor, labels: Tensor, motions, net=None) -> tuple[dict, Tensor]:
    """The per-clip measures of `videos` against the named digits `labels` (N,) and
    directions `motions` (N,) (indices into DIRECTIONS, -1 none, or their names), as shares
    in [0, 1]; and the frames' evaluator features (for the Frechet distance)."""
    x = on_canvas(videos)
    labels = labels.long().cpu().flatten()
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} videos; give one per video")
    motions = _motion_indices(motions, len(x))
    classes, feats = frame_classes(x, net)
    out = {"frame_accuracy": float((classes == labels[:, None]).double().mean()),
           "direction_accuracy": float((motion_direction(x) == motions).double().mean()),
           "temporal_consistency": float((classes == classes[:, :1]).all(1).double().mean()),
           "smooth_motion": float(smooth_motion(x).double().mean())}
    return out, feats


def real_clips(frames: int, split: str = "test"):
    """The real clips of `frames` frames (one-frame: the still frames) of a split."""
    from ..data.moving import moving_digits, still_frames

    return still_frames(split) if frames == 1 else moving_digits(split, frames=frames)


@functools.lru_cache(maxsize=4)
def real_reference(frames: int) -> tuple[dict, Tensor, int]:
    """The measures of the real test clips of `frames` frames, their frames' evaluator
    features and their count (computed once per process and frame count)."""
    test = real_clips(frames, "test")
    motions = test.attributes.get("direction", torch.full((len(test),), -1))
    measures, feats = video_measures(test.data, test.labels, motions)
    return measures, feats, len(test)


def video_report(videos: Tensor, labels: Tensor, motions, frechet: bool = True, seed: int = 0) -> dict:
    """Every measure of `videos` (N, 1, T, 32, 32) against `labels` and `motions` (see
    `video_measures`), with the same measures on the real test clips of T frames (prefixed
    "real_": the reference) and, with `frechet`, the per-frame Frechet distance to the test
    clips' frames beside its real-vs-real value (N training clips' frames against the same
    test frames, N drawn with `seed`)."""
    from ..metrics.evaluator import frechet_distance, load_evaluator

    net = load_evaluator(EVALUATOR)
    x = on_canvas(videos)
    out, feats = video_measures(x, labels, motions, net)
    real, test_feats, count = real_reference(x.shape[2])
    out.update({f"real_{k}": v for k, v in real.items()})
    out.update(num_videos=len(x), real_num_videos=count)
    if frechet:
        train = real_clips(x.shape[2], "train")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(x)]
        _, train_feats = frame_classes(train.data[pick], net)
        out["frechet_distance_frames"] = frechet_distance(feats, test_feats)
        out["frechet_real_vs_real_frames"] = frechet_distance(train_feats, test_feats)
    return out


def spread(count: int, n: int | None) -> Tensor:
    """n indices evenly spread over 0..count-1 (every class of a class-sorted split); None or
    n >= count: all."""
    if n is None or n >= count:
        return torch.arange(count)
    return (torch.arange(n) * count) // n


def real_video_report(dataset: str, n: int | None = None, seed: int = 0) -> dict:
    """The measures of `video_measures` on n real test clips of a registered video dataset
    (spread over the class-sorted split; None: all), and the per-frame Frechet distance of n
    training clips' frames (drawn with `seed`) to all test clips' frames: what real data
    scores on everything `video_report` measures (prefix its keys with "real_")."""
    from ..data import load_dataset
    from ..metrics.evaluator import frechet_distance, load_evaluator

    net = load_evaluator(EVALUATOR)
    test = load_dataset(dataset, "test")
    if test.kind != "video" or not test.attributes:
        raise ValueError(f"dataset={dataset!r} is not valid; valid: a moving-digit video dataset "
                         "(moving-mnist5k, moving-mnist5k-17, moving-mnist5k-two, mnist5k-frames)")
    keep = spread(len(test), n)
    motions = test.attributes.get("direction", torch.full((len(test),), -1))
    out, _ = video_measures(test.data[keep], test.labels[keep], motions[keep], net)
    _, test_feats = frame_classes(test.data, net)
    train = load_dataset(dataset, "train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(keep)]
    _, train_feats = frame_classes(train.data[pick], net)
    out.update(num_videos=len(keep), frechet_distance_frames=frechet_distance(train_feats, test_feats))
    return out
