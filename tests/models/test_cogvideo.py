"""CogVideo's transformer: the sequence layout and the two channels' masks on a hand-written
case; at its start (gates at 0) every frame's logits are the image model's on [text | that
frame] (a gate that is not 0, or a spatial channel that sees other frames, is caught);
causality; the KV cache equals the full forward (masks at the wrong rows are caught); the image
model's weights load into it and nothing else does."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.models import cogvideo as C
from hirune.models.cogvideo import CogVideoTransformer, channel_masks, predictor_positions, sequence_layout
from hirune.sampling.autoregressive import sample_image_tokens

L, N = 3, 2   # text tokens, codes per frame


def _models(seed=0):
    torch.manual_seed(seed)
    image = build_model("dalle", text_vocab=11, text_len=L, num_codes=7, image_len=N, width=16, depth=2,
                        heads=2).double().eval()
    video = CogVideoTransformer.from_image_model(image, frames=4, rates=3).double().eval()
    return image, video


def _tokens(B=2, frames=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(11, (B, L), generator=g)
    codes = torch.randint(7, (B, frames * N), generator=g)
    return text, torch.tensor([0, 2])[:B], codes, torch.arange(frames)


def test_layout_and_masks_on_a_hand_written_case():
    # n = 3 codes: [t0 t1 t2 | r | s0 c0 c1 | s1 c2], and the position predicting code 3 is c2's
    group, kind, index = sequence_layout(L, N, 3)
    assert group.tolist() == [-1, -1, -1, -2, 0, 0, 0, 1, 1]
    assert kind.tolist() == [0, 0, 0, 1, 2, 3, 3, 2, 3]
    assert index.tolist() == [0, 1, 2, 0, 0, 0, 1, 1, 2]
    assert C.sequence_length(L, N, 3) == 9
    assert predictor_positions(L, N, torch.arange(4)).tolist() == [4, 5, 7, 8]   # s0, c0, s1, c2
    spatial, temporal = channel_masks(group, L, 9)
    rows = ["".join("x" if v else "." for v in row) for row in spatial.tolist()]
    assert rows == ["x........",    # t0
                    "xx.......",    # t1
                    "xxx......",    # t2
                    "xxxx.....",    # r: the text and itself
                    "xx..x....",    # s0: t0 t1 (s0 stands for t2) and itself
                    "xx..xx...",    # c0
                    "xx..xxx..",    # c1
                    "xx.....x.",    # s1: never frame 0, never r
                    "xx.....xx"]    # c2
    assert torch.equal(temporal, torch.ones(9, 9, dtype=torch.bool).tril())
    last_two = channel_masks(group, L, 2)
    assert torch.equal(last_two[0], spatial[-2:]) and torch.equal(last_two[1], temporal[-2:])


def _frame_gaps(image, video, text, rate, codes, times):
    """The largest difference, over frames, between the video model's logits for a frame's codes
    and the image model's on [text | that frame]."""
    out = video(text, rate, codes[:, :-1], times)
    gaps = []
    for f in range(codes.shape[1] // N):
        ref = image(text, codes[:, f * N:(f + 1) * N - 1])[:, L - 1:]
        gaps.append((out[:, predictor_positions(L, N, torch.arange(f * N, (f + 1) * N))] - ref).abs().max())
    return float(max(gaps).detach())


def test_at_its_start_every_frame_is_the_image_model_on_text_and_that_frame(monkeypatch):
    image, video = _models()
    tokens = _tokens()
    assert _frame_gaps(image, video, *tokens) < 1e-10
    # the text's own next-token logits too
    assert float((video(*tokens[:2], tokens[2][:, :0], tokens[3])[:, : L] - image(tokens[0], tokens[2][:, :0])[:, :L])
                 .abs().max()) < 1e-10
    # broken: the new branch not at zero
    with torch.no_grad():
        video.blocks[1].gate.fill_(0.1)
    assert _frame_gaps(image, video, *tokens) > 1e-4
    with torch.no_grad():
        video.blocks[1].gate.zero_()
    # broken: a spatial channel that sees the other frames (plain causal attention)
    monkeypatch.setattr(C, "channel_masks", lambda group, text_len, m: (channel_masks(group, text_len, m)[1],) * 2)
    assert _frame_gaps(image, video, *tokens) > 1e-4


def _causal_break(video, text, rate, codes, times):
    """The largest change of any position's logits before the changed token, for a change of each token."""
    full = video(text, rate, codes[:, :-1], times)
    worst = 0.0
    for i in range(codes.shape[1] - 1):
        changed = codes.clone()
        changed[:, i] = (changed[:, i] + 1) % 7
        out = video(text, rate, changed[:, :-1], times)
        p = int(predictor_positions(L, N, torch.tensor(i))) + 1        # the position that holds code i
        worst = max(worst, float((out[:, :p] - full[:, :p]).abs().max()))
        assert float((out[:, p:] - full[:, p:]).abs().max()) > 0       # and later ones do depend on it
    return worst


def test_no_position_depends_on_a_later_token(monkeypatch):
    _, video = _models()
    with torch.no_grad():
        for block in video.blocks:
            block.gate.normal_()                       # the temporal channel in use
    tokens = _tokens()
    assert _causal_break(video, *tokens) == 0.0
    # broken: a temporal channel that sees the future
    monkeypatch.setattr(C, "channel_masks", lambda group, text_len, m: (
        channel_masks(group, text_len, m)[0], torch.ones(m, len(group), dtype=torch.bool)))
    assert _causal_break(video, *tokens) > 1e-4


def _incremental(video, text, rate, codes, times, cache):
    return torch.cat([video(text, rate, codes[:, :n], times, cache=cache) for n in range(codes.shape[1])], 1)


def test_the_cache_equals_the_full_forward(monkeypatch):
    _, video = _models()
    with torch.no_grad():
        for block in video.blocks:
            block.gate.normal_()
    text, rate, codes, times = _tokens()
    full = video(text, rate, codes[:, :-1], times)
    assert float((_incremental(video, text, rate, codes, times, video.new_cache()) - full).abs().max()) < 1e-10
    # and sampling through it: cached and recomputed draws are the same tokens (with guidance)
    bound = video.bound(1, times)
    draws = [sample_image_tokens(bound, text, 3 * N, scale=2.0, null_text=text[:1], use_cache=use,
                                 generator=torch.Generator().manual_seed(0)) for use in (True, False)]
    assert torch.equal(*draws)
    # broken: the new positions' queries given the masks' first rows instead of their own (the same in a full
    # forward, wrong with a cache)
    monkeypatch.setattr(C, "channel_masks", lambda group, text_len, m: tuple(
        mask[:m] for mask in channel_masks(group, text_len, len(group))))
    assert float((_incremental(video, text, rate, codes, times, video.new_cache()) - full).abs().max()) > 1e-4


def test_only_the_image_model_loads_and_the_new_parts_are_named():
    image, video = _models()
    assert {n.split(".")[0] for n in video.new_parameter_names()} == {"blocks", "rate_embedding", "time_embedding"}
    assert all(".temporal." in n or n.endswith(".gate") for n in video.new_parameter_names() if n.startswith("blocks"))
    for name, p in image.state_dict().items():
        assert torch.equal(video.state_dict()[name], p)
    other = build_model("dalle", text_vocab=11, text_len=L, num_codes=7, image_len=N, width=16, depth=3, heads=2)
    with pytest.raises(ValueError, match="not the image model"):
        video.load_image_weights(other.state_dict())
    with pytest.raises(ValueError, match="frame-rate token 3 is outside its table; valid: 0..2"):
        text, _, codes, times = _tokens()
        video(text, torch.tensor([3, 0]), codes[:, :-1], times)
