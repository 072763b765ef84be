"""hirune.data.video_captions: captions of moving-digit clips from their attributes, the
Captioner interface, the held-out phrasings and the word tokenizer's vocabulary."""

import pytest
import torch

from hirune.data import load_dataset
from hirune.data.captions import words
from hirune.data.moving import DIRECTIONS
from hirune.data.video_captions import (MOTIONS, VIDEO_HELD_OUT_TEMPLATES, VIDEO_TRAIN_TEMPLATES, VideoCaptioner,
                                        parse_motion, video_caption, video_training_vocabulary)
from hirune.models.text import UNK, WordTokenizer

pytest.importorskip("mlxtend")


def test_the_briefs_examples_and_a_still_frame():
    assert video_caption(7, "left") == "a seven moving left"
    assert video_caption(2, "down", bounced=True, thickness=2) == "a thick two bouncing down"
    assert video_caption(3, DIRECTIONS.index("up"), speed=2) == "a fast three moving up"
    assert video_caption(7, None, thickness=2) == video_caption(7, "none", 2, thickness=2) == "a thick seven"
    assert video_caption(2, "bouncing down", thickness=2) == video_caption(2, "down", bounced=True, thickness=2)
    assert video_caption(7, "moving left") == video_caption(7, 0) == "a seven moving left"
    assert MOTIONS == ("moving left", "moving right", "moving up", "moving down",
                       "bouncing left", "bouncing right", "bouncing up", "bouncing down")
    assert [parse_motion(m) for m in ("bouncing up", "moving right", "down", 3, None)] == \
        [(2, True), (1, False), (3, None), (3, None), (-1, None)]
    assert video_caption(4, "right", 2, True, 0, VIDEO_TRAIN_TEMPLATES[1]) == "the digit 4 bouncing right quickly"
    assert video_caption(4, "right", 2, True, 0, VIDEO_HELD_OUT_TEMPLATES[0]) == \
        "a video of a fast thin four heading right and bouncing back"


def test_bad_motion_or_speed_names_what_is_valid():
    with pytest.raises(ValueError, match=r"motion='sideways' is not valid; valid: \['moving left', 'moving right'"):
        video_caption(1, "sideways")
    with pytest.raises(ValueError, match="motion='moving left' and bounced=True disagree"):
        video_caption(1, "moving left", bounced=True)
    with pytest.raises(ValueError, match="motion=4 is not valid"):
        video_caption(1, 4)
    with pytest.raises(ValueError, match=r"speed=3 is not valid; valid: \[1, 2\]"):
        video_caption(1, "left", speed=3)


def test_captions_say_what_the_attributes_are():
    clips = load_dataset("moving-mnist5k", "test")
    a = clips.attributes
    n = len(clips)
    texts = VideoCaptioner(clips).captions(torch.arange(n), torch.zeros(n, dtype=torch.long))
    for i, text in enumerate(texts):
        w = words(text)
        assert w[-1] == DIRECTIONS[int(a["direction"][i])]
        assert ("bouncing" in w) == bool(a["bounced"][i]) and ("fast" in w) == (int(a["speed"][i]) == 2)
        assert ("thick" in w) == (int(a["thickness"][i]) == 2) and ("thin" in w) == (int(a["thickness"][i]) == 0)


def test_the_captioner_interface_is_the_image_captioners():
    """Same call as `Captioner.captions(idx, template, drop, templates)`: dropped captions
    are empty, template indices wrap, `templates` chooses the phrasing set."""
    clips = load_dataset("moving-mnist5k", "test")
    cap = VideoCaptioner(clips)
    idx, k, drop = torch.tensor([3, 3, 5, 7]), torch.tensor([0, 4, 1, 2]), torch.tensor([False, False, True, False])
    out = cap.captions(idx, k, drop)
    assert out[0] == out[1] != "" and out[2] == ""
    assert cap.templates == VIDEO_TRAIN_TEMPLATES   # the phrasings a run draws its template indices over
    held = cap.captions(idx, k, templates=VIDEO_HELD_OUT_TEMPLATES)
    assert held[1] == cap.caption(3, VIDEO_HELD_OUT_TEMPLATES[1])
    still = cap.captions(idx, k, drop, still=torch.tensor([True, False, True, False]))
    assert still[1:] == out[1:] and still[0] == cap.caption(3, VIDEO_TRAIN_TEMPLATES[0], still=True)
    a = clips.attributes
    assert still[0] == video_caption(int(a["label"][3]), None, thickness=int(a["thickness"][3]))   # no motion, no speed
    with pytest.raises(ValueError, match="from a clip's attributes; 'mnist5k' has none"):
        VideoCaptioner(load_dataset("mnist5k", "test"))


def test_two_digits_and_still_frames():
    two = load_dataset("moving-mnist5k-two", "test")
    text = VideoCaptioner(two).caption(0, VIDEO_TRAIN_TEMPLATES[0])
    first, second = text.split(" and ")
    a = two.attributes
    assert first == video_caption(int(a["label"][0]), int(a["direction"][0]), int(a["speed"][0]),
                                  bool(a["bounced"][0]), int(a["thickness"][0]))
    assert words(second)[-1] == DIRECTIONS[int(a["direction_2"][0])]
    frames = load_dataset("mnist5k-frames", "test")
    assert VideoCaptioner(frames).caption(0, VIDEO_TRAIN_TEMPLATES[1]) == f"the digit {int(frames.labels[0])}"


def test_the_vocabulary_covers_every_training_caption():
    """No training caption of any clip has an unknown word; one digit's fit the tokenizer's
    16 tokens; held-out phrasings bring words it has not seen (so they test the meaning)."""
    vocab = video_training_vocabulary()
    tok = WordTokenizer(vocab)
    for name in ("moving-mnist5k", "moving-mnist5k-two", "mnist5k-frames"):
        clips = load_dataset(name, "test")
        n = len(clips)
        for k in range(len(VIDEO_TRAIN_TEMPLATES)):
            texts = VideoCaptioner(clips).captions(torch.arange(n), torch.full((n,), k))
            assert all(set(words(t)) <= set(vocab) for t in texts)
            if name != "moving-mnist5k-two":
                ids, _ = tok(texts)
                assert not (ids == UNK).any() and max(len(words(t)) for t in texts) + 1 <= tok.max_len
    held = {w for tpl in VIDEO_HELD_OUT_TEMPLATES for w in words(video_caption(1, "up", 2, True, 0, tpl))}
    assert {"video", "heading", "drifting", "going", "rapidly"} <= held - set(vocab)
    assert {"left", "right", "up", "down"} <= set(vocab)
