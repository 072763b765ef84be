"""Captions of moving-digit clips (`data.moving`), written from each clip's attributes:
"a seven moving left", "a thick two bouncing down", "a fast three moving up".

    digit      its name ("seven") or numeral ("7")
    thickness  thin / (nothing) / thick: the digit's ink ranked within its class, as the
               image captions measure it (`data.captions`)
    speed      (nothing) for slow 1 px / frame, "fast" / "quickly" for 2 px / frame
    motion     "moving left" for a clip that never reaches the edge it heads for; "bouncing
               left" for one that reaches the left edge and comes back.  The direction is
               always the first leg's (the dataset makes it the clip's largest
               excursion), which is what the measure reads (`evaluation.video.motion_direction`)
    still      a one-frame video (`mnist5k-frames`, no "direction" attribute) says nothing
               of motion: "a thick seven"

A clip of two digits (`moving-mnist5k-two`) is captioned "<first> and <second>", both in
the same phrasing.  As with the image captions, training draws one of
`VIDEO_TRAIN_TEMPLATES` per example and step, and `VIDEO_HELD_OUT_TEMPLATES` are phrasings
never seen in training (other verbs and order; the direction words are the same), for
measuring whether a text-to-video model follows the meaning rather than the strings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .captions import NAMES, words
from .moving import DIRECTIONS, SPEEDS

# per thickness (0, 1, 2) and per speed (slow, fast)
_ADJ = ("thin ", "", "thick ")
_STROKES = (" in thin strokes", "", " in thick strokes")
_SPEED = ("", "fast ")
_PACE = ("", " quickly")
_RAPIDLY = ("", " rapidly")
# motion phrases: (not bounced, bounced), "{d}" the direction
_MOTIONS = {
    "motion": ("moving {d}", "bouncing {d}"),
    "heading": ("heading {d}", "heading {d} and bouncing back"),
    "drifting": ("drifting {d}", "drifting {d} then back"),
    "going": ("going {d}", "going {d} and back"),
}

VIDEO_TRAIN_TEMPLATES = (
    "a {speed}{adj}{name}{motion}",
    "the digit {digit}{motion}{pace}",
    "a {adj}handwritten {name}{motion}{pace}",
    "a {speed}{name}{strokes}{motion}",
)
VIDEO_HELD_OUT_TEMPLATES = (
    "a video of a {speed}{adj}{name}{heading}",
    "the number {digit}{drifting}{rapidly}",
    "a clip showing the digit {name}{going}",
)


# the motions a prompt can name: "moving left" ... "bouncing down" (`video_caption` also takes
# a bare direction, "left", or its index in DIRECTIONS)
MOTIONS = tuple(f"{verb} {d}" for verb in ("moving", "bouncing") for d in DIRECTIONS)


def video_caption(label: int, motion: int | str | None, speed: int = SPEEDS[0], bounced: bool | None = None,
                  thickness: int = 1, template: str = VIDEO_TRAIN_TEMPLATES[0]) -> str:
    """The caption of one digit's clip: label 0..9; motion one of MOTIONS ("bouncing left"),
    a direction of DIRECTIONS ("left") or its index (None, -1 or "none": a still frame,
    nothing said of motion or speed); speed in px / frame (SPEEDS: 1 slow, 2 fast); bounced
    (None: as the motion says, else False); thickness 0 / 1 / 2."""
    d, says_bounced = parse_motion(motion)
    if says_bounced is not None and bounced is not None and bool(bounced) != says_bounced:
        raise ValueError(f"motion={motion!r} and bounced={bounced!r} disagree; give one of them")
    if speed not in SPEEDS:
        raise ValueError(f"speed={speed!r} is not valid; valid: {list(SPEEDS)} (px per frame)")
    fast = SPEEDS.index(speed) if d >= 0 else 0                  # a still frame is neither slow nor fast
    b = int(bool(bounced if says_bounced is None else says_bounced))
    phrases = {key: "" if d < 0 else " " + forms[b].format(d=DIRECTIONS[d]) for key, forms in _MOTIONS.items()}
    return template.format(name=NAMES[label], digit=label, adj=_ADJ[thickness], strokes=_STROKES[thickness],
                           speed=_SPEED[fast], pace=_PACE[fast], rapidly=_RAPIDLY[fast], **phrases)


def parse_motion(motion: int | str | None) -> tuple[int, bool | None]:
    """(direction index in DIRECTIONS or -1 for none, bounced as the motion says or None):
    "bouncing left" -> (0, True), "moving up" -> (2, False), "left" or 0 -> (0, None),
    None / -1 / "none" -> (-1, None)."""
    if motion is None or motion == "none" or (isinstance(motion, int) and not isinstance(motion, bool)
                                              and motion == -1):
        return -1, None
    if isinstance(motion, str):
        verb, _, direction = motion.strip().rpartition(" ")
        if direction in DIRECTIONS and verb in ("", "moving", "bouncing"):
            return DIRECTIONS.index(direction), None if not verb else verb == "bouncing"
    elif not isinstance(motion, bool) and isinstance(motion, int) and 0 <= motion < len(DIRECTIONS):
        return motion, None
    raise ValueError(f"motion={motion!r} is not valid; valid: {list(MOTIONS)}, a direction {list(DIRECTIONS)} "
                     "or its index 0..3, or None / 'none' / -1 (still)")


def motion_index(motion: int | str | None) -> int:
    """A motion's direction as its index in DIRECTIONS; -1 for none (see `parse_motion`)."""
    return parse_motion(motion)[0]


# image datasets captioned as clips (still frames: "a thick seven"), so that a video model can start from a
# text-to-image model trained on them and read the same words (CogVideo from CogView2)
CAPTIONED_AS_CLIPS = ("moving-mnist5k-stills",)


def captioned_as_clips(dataset: str) -> bool:
    """Whether an image dataset's captions are those of the clips (`VideoCaptioner`, still)."""
    return dataset in CAPTIONED_AS_CLIPS


def video_training_vocabulary() -> list[str]:
    """Every word a training caption of a clip can contain, sorted ("and" joins two
    digits); the tiny word tokenizer's vocabulary for text-to-video."""
    seen = {"and"}
    for label in range(10):
        for d in (-1, *range(len(DIRECTIONS))):
            for s in SPEEDS:
                for b in (False, True):
                    for th in range(3):
                        for tpl in VIDEO_TRAIN_TEMPLATES:
                            seen.update(words(video_caption(label, d, s, b, th, tpl)))
    return sorted(seen)


class VideoCaptioner:
    """Captions for the clips of a moving-digit dataset, from its `attributes` (the same
    interface as `data.captions.Captioner`: `captions(idx, template, drop, templates)`;
    `templates`: the training phrasings a run draws template indices over)."""

    templates = VIDEO_TRAIN_TEMPLATES

    def __init__(self, dataset):
        attrs = getattr(dataset, "attributes", None)
        if not attrs or "label" not in attrs:
            raise ValueError(f"video captions are written from a clip's attributes; {dataset.name!r} has none "
                             "(use moving-mnist5k, moving-mnist5k-17, moving-mnist5k-two or mnist5k-frames)")
        self.layers = [self._layer(attrs, "")] + ([self._layer(attrs, "_2")] if "label_2" in attrs else [])

    @staticmethod
    def _layer(attrs: dict[str, Tensor], suffix: str) -> list[list[int]]:
        n = len(attrs["label" + suffix])
        default = {"direction": -1, "speed": SPEEDS[0], "bounced": 0, "thickness": 1}
        columns = [attrs["label" + suffix]] + [
            attrs.get(key + suffix, torch.full((n,), value)) for key, value in default.items()]
        return torch.stack([c.long().cpu() for c in columns], 1).tolist()

    def caption(self, i: int, template: str, still: bool = False) -> str:
        """Example i's caption in one phrasing; `still`: of its first frame alone (a one-frame
        video: the digits as they look, nothing of motion or speed)."""
        return " and ".join(video_caption(label, -1 if still else d, s, bool(b), th, template)
                            for label, d, s, b, th in (layer[i] for layer in self.layers))

    def captions(self, idx: Tensor, template: Tensor, drop: Tensor | None = None,
                 templates: tuple[str, ...] = VIDEO_TRAIN_TEMPLATES, still: Tensor | None = None) -> list[str]:
        """The captions of examples `idx` (B,) with template indices (B,); where `drop` is
        True the caption is empty (the null condition of classifier-free guidance); where
        `still` (B,) is True, the caption of the clip's first frame alone (frame packing)."""
        idx, template = idx.cpu().tolist(), template.cpu().tolist()
        dropped = drop.cpu().tolist() if drop is not None else [False] * len(idx)
        stills = still.cpu().tolist() if still is not None else [False] * len(idx)
        return ["" if d else self.caption(i, templates[k % len(templates)], bool(f))
                for i, k, d, f in zip(idx, template, dropped, stills)]


def clip_prompts(n: int, label: int | None = None, motion: str | None = None) -> tuple[list[str], Tensor, list]:
    """n prompts and what they name: the digits in turn (or all `label`) with the motions in
    turn, each for ten clips (or all `motion`); returns (prompts, labels (n,), motions).  The
    prompts every video family samples and is evaluated on."""
    if motion is not None and motion not in MOTIONS:
        raise ValueError(f"motion={motion!r} is not valid; valid: {list(MOTIONS)}")
    if label is not None and (isinstance(label, bool) or label not in range(10)):
        raise ValueError(f"label={label!r} is not valid; valid: 0..9")
    labels = torch.full((n,), label) if label is not None else torch.arange(n) % 10
    motions = [motion or MOTIONS[(i // 10) % len(MOTIONS)] for i in range(n)]
    return [video_caption(int(k), m) for k, m in zip(labels, motions)], labels, motions
