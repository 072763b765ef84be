"""Aspect-ratio buckets of images (data/buckets.py) and mnist5k-aspect: centred crops and
pads that undo each other, each digit's ink on the bucket its aspect fits best, unchanged
pixels, and the format a checkpoint keeps."""

from __future__ import annotations

import pytest
import torch

from hirune.data import DataFormat, data_format, dataset_buckets, load_dataset
from hirune.data.buckets import (ASPECT_BUCKETS, BACKGROUND, best_buckets, bucket_images, canvas_shape, ink_boxes,
                                 recentre)


def test_recentre_crops_and_pads_about_the_centre_and_undoes_itself():
    x = torch.randn(2, 1, 32, 32)
    for size in ASPECT_BUCKETS:
        cut = recentre(x, size)
        top, left = (32 - size[0]) // 2, (32 - size[1]) // 2
        assert torch.equal(cut, x[..., top: top + size[0], left: left + size[1]])
        back = recentre(cut, (32, 32))
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top: top + size[0], left: left + size[1]] = True
        assert torch.equal(back[..., inside], x[..., inside]) and (back[..., ~inside] == BACKGROUND).all()
    odd = recentre(torch.ones(1, 1, 5, 4), (8, 7))          # pads of 3 and 3 split 1 / 2
    assert odd.shape == (1, 1, 8, 7) and odd[0, 0, 1:6, 1:5].eq(1).all() and odd.sum() == 20 - 36
    assert torch.equal(recentre(odd, (5, 4)), torch.ones(1, 1, 5, 4))
    mixed = recentre(torch.randn(1, 1, 32, 24), (28, 28))  # one side cropped, the other padded
    assert mixed.shape == (1, 1, 28, 28) and (mixed[..., :2] == BACKGROUND).all()


def test_ink_boxes_and_the_bucket_an_aspect_fits_best():
    images = torch.full((3, 1, 28, 28), -1.0)
    images[0, 0, 4:24, 10:16] = 0.5      # tall: 20 x 6
    images[1, 0, 9:17, 3:23] = 0.5       # wide: 8 x 20
    boxes = ink_boxes(images)
    assert boxes.tolist() == [[4, 10, 20, 6], [9, 3, 8, 20], [0, 0, 28, 28]]  # a blank image: the whole frame
    h, w = torch.tensor([20, 8, 20, 19, 30]), torch.tensor([6, 20, 19, 20, 10])
    assert best_buckets(h[:4], w[:4], ASPECT_BUCKETS).tolist() == [1, 2, 0, 0]
    # a 30-pixel-tall box fits only where H >= 30: the tall bucket, whatever its aspect
    assert best_buckets(torch.tensor([30]), torch.tensor([24]), ASPECT_BUCKETS).tolist() == [1]
    with pytest.raises(ValueError, match="fits none of the buckets 28x28, 32x24, 24x32"):
        best_buckets(torch.tensor([33]), torch.tensor([3]), ASPECT_BUCKETS)


def test_bucket_images_centre_the_ink_on_its_bucket_and_copy_its_pixels():
    g = torch.Generator().manual_seed(0)
    images = torch.full((2, 1, 28, 28), -1.0)
    images[0, 0, 3:23, 9:15] = torch.rand(20, 6, generator=g)      # tall
    images[1, 0, 10:18, 2:22] = torch.rand(8, 20, generator=g)     # wide
    out, bucket = bucket_images(images, ASPECT_BUCKETS)
    assert out.shape == (2, 1, *canvas_shape(ASPECT_BUCKETS)) == (2, 1, 32, 32) and bucket.tolist() == [1, 2]
    for i, (top, left, h, w) in enumerate(ink_boxes(images).tolist()):
        size = ASPECT_BUCKETS[int(bucket[i])]
        on_bucket = recentre(out[i: i + 1], size)
        assert torch.equal(recentre(on_bucket, (32, 32)), out[i: i + 1])      # nothing outside the bucket
        t, l = (size[0] - h) // 2, (size[1] - w) // 2                         # the ink centred on it
        assert torch.equal(on_bucket[0, :, t: t + h, l: l + w], images[i, :, top: top + h, left: left + w])
        assert ink_boxes(on_bucket).tolist() == [[t, l, h, w]]


@pytest.fixture(scope="module")
def aspect():
    return load_dataset("mnist5k-aspect", "train")


def test_mnist5k_aspect_is_mnist5k_in_its_buckets(aspect):
    plain = load_dataset("mnist5k", "train")
    assert aspect.data.shape == (4500, 1, 32, 32) and aspect.buckets == ASPECT_BUCKETS
    assert torch.equal(aspect.labels, plain.labels) and torch.equal(aspect.indices, plain.indices)
    assert aspect.levels == 256 and aspect.bucket.shape == (4500,)
    counts = torch.bincount(aspect.bucket, minlength=3).tolist()
    assert counts == [1706, 2594, 200]
    assert (aspect.bucket[aspect.labels == 1] == 1).float().mean() > 0.9      # the ones stand on the tall canvas
    # each example: its ink (the same pixel values, in the same order) inside its bucket, background around
    for i in range(0, 4500, 97):
        size = ASPECT_BUCKETS[int(aspect.bucket[i])]
        assert torch.equal(recentre(recentre(aspect.data[i: i + 1], size), (32, 32)), aspect.data[i: i + 1])
        ink, src = aspect.data[i][aspect.data[i] > -1], plain.data[i][plain.data[i] > -1]
        assert torch.equal(ink, src)
    assert load_dataset("mnist5k-aspect", "test").data.shape == (500, 1, 32, 32)


def test_the_format_keeps_the_buckets_and_old_formats_read_the_same(aspect):
    fmt = aspect.format
    assert fmt == data_format("mnist5k-aspect") and fmt.shape == (1, 32, 32) and fmt.buckets == ASPECT_BUCKETS
    assert DataFormat.from_dict(fmt.to_dict()) == fmt
    assert dataset_buckets("mnist5k-aspect") == ASPECT_BUCKETS and dataset_buckets("mnist5k") == ()
    plain = data_format("mnist5k")
    assert "buckets" not in plain.to_dict()                     # the state of every other run as it was
    assert DataFormat.from_dict({"name": "mnist5k", "kind": "image", "shape": [1, 28, 28], "num_classes": 10,
                                 "levels": 256}) == plain


def test_the_evaluator_reads_any_bucket_centred_to_its_size(aspect):
    from hirune.metrics.evaluator import evaluate_images, evaluator_view, features_and_logits, load_evaluator

    net = load_evaluator("mnist5k-aspect")
    every = torch.arange(0, 4500, 9)                            # 500 of every class (the split is sorted by class)
    x, bucket = aspect.data[every], aspect.bucket[every]
    view = evaluator_view(net, "mnist5k-aspect", x)
    assert torch.equal(view, recentre(x, (28, 28)))
    _, logits = features_and_logits(net, view)
    assert (logits.argmax(1) == aspect.labels[every]).float().mean() > 0.95
    tall = x[bucket == 1]
    assert torch.equal(evaluator_view(net, "mnist5k-aspect", recentre(tall, (32, 24))), recentre(tall, (28, 28)))
    assert evaluator_view(net, "mnist5k", x) is x             # other datasets: as they are
    # training digits as the evaluator sees them: as far from the test split as real data are
    scores = evaluate_images("mnist5k-aspect", x)
    assert scores["frechet_distance"] < 1.5 * scores["frechet_real_vs_real"]
