"""Tests for rcnn_steps.ops.image_list (chapter 04).

The oracle is torchvision's batching, ``GeneralizedRCNNTransform.batch_images``, which pads
to the largest image rounded up to ``size_divisible``: our padded batch must equal it bit
for bit, hold each image unchanged in its top-left corner, and remember the true sizes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from rcnn_steps.ops.image_list import ImageList

TV_TRANSFORM = GeneralizedRCNNTransform(
    min_size=800, max_size=1333, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0]
)


def random_images(sizes, channels=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(channels, h, w, generator=gen) for h, w in sizes]
    if dtype == torch.uint8:
        return [(img * 255).to(torch.uint8) for img in images]
    return [img.to(dtype) for img in images]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=1, max_size=4),
    channels=st.sampled_from([1, 3]),
    size_divisible=st.sampled_from([1, 7, 16, 32]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.uint8]),
    seed=st.integers(0, 2**16),
)
def test_equals_torchvision_batching(sizes, channels, size_divisible, dtype, seed):
    images = random_images(sizes, channels, dtype, seed)
    batch = ImageList.from_tensors(images, size_divisible=size_divisible)
    expected = TV_TRANSFORM.batch_images([img.clone() for img in images], size_divisible)
    torch.testing.assert_close(batch.tensors, expected, rtol=0, atol=0)
    assert batch.image_sizes == [tuple(s) for s in sizes]
    assert all(isinstance(v, int) for s in batch.image_sizes for v in s)
    n, c, h, w = batch.tensors.shape
    assert (n, c) == (len(sizes), channels)
    assert h % size_divisible == 0 and w % size_divisible == 0
    assert h - max(s[0] for s in sizes) < size_divisible
    assert w - max(s[1] for s in sizes) < size_divisible
    for i, img in enumerate(images):
        assert torch.equal(batch[i], img)  # unpadded view is the image itself


def test_padding_is_bottom_right_with_pad_value():
    images = [torch.ones(2, 3, 5), torch.full((2, 4, 2), 2.0)]
    batch = ImageList.from_tensors(images, size_divisible=4, pad_value=-1.0)
    assert batch.tensors.shape == (2, 2, 4, 8)
    assert batch.image_sizes == [(3, 5), (4, 2)]
    first = batch.tensors[0]
    assert torch.equal(first[:, :3, :5], torch.ones(2, 3, 5))
    assert (first[:, 3:, :] == -1).all() and (first[:, :, 5:] == -1).all()
    second = batch.tensors[1]
    assert torch.equal(second[:, :, :2], torch.full((2, 4, 2), 2.0))
    assert (second[:, :, 2:] == -1).all()


@pytest.mark.parametrize("size_divisible", [0, 1])
def test_no_rounding(size_divisible):
    batch = ImageList.from_tensors(random_images([(5, 9), (7, 3)]), size_divisible)
    assert batch.tensors.shape == (2, 3, 7, 9)


def test_a_batch_tensor_is_taken_as_its_images():
    images = torch.rand(2, 3, 20, 30)
    batch = ImageList.from_tensors(images, size_divisible=32)
    assert batch.tensors.shape == (2, 3, 32, 32)
    assert batch.image_sizes == [(20, 30), (20, 30)]
    assert torch.equal(batch.tensors[:, :, :20, :30], images)


def test_copies_the_images():
    images = random_images([(4, 4)])
    batch = ImageList.from_tensors(images, size_divisible=1)
    batch.tensors.zero_()
    assert images[0].sum() > 0


def test_to_device_len_repr():
    batch = ImageList.from_tensors(random_images([(10, 12), (8, 8)]), size_divisible=8)
    moved = batch.to("meta")
    assert moved.tensors.device.type == "meta" and moved.device.type == "meta"
    assert moved.image_sizes == batch.image_sizes
    assert batch.to(torch.device("cpu")).tensors.data_ptr() == batch.tensors.data_ptr()
    assert len(batch) == 2
    assert "image_sizes=[(10, 12), (8, 8)]" in repr(batch)


def test_a_single_image_tensor_is_a_batch_of_one_as_in_torchvision():
    # torchvision's own anchor test builds ImageList(torch.randn(3, 800, 800), [(800, 800)])
    from torchvision.models.detection.image_list import ImageList as TvImageList

    image = torch.rand(3, 8, 10)
    ours, theirs = ImageList(image, [(8, 10)]), TvImageList(image, [(8, 10)])
    assert ours.tensors.shape == (1, 3, 8, 10) and ours.image_sizes == [(8, 10)]
    assert ours.tensors.shape[-2:] == theirs.tensors.shape[-2:]
    assert torch.equal(ours[0], image)


def test_constructor_checks():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*got \(3, 8, 8\) with 2 image sizes"):
        ImageList(torch.zeros(3, 8, 8), [(8, 8), (8, 8)])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageList(torch.zeros(8, 8), [(8, 8)])
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        ImageList(torch.zeros(2, 3, 8, 8), [(8, 8)])
    with pytest.raises(ValueError, match="does not fit"):
        ImageList(torch.zeros(1, 3, 8, 8), [(9, 8)])
    with pytest.raises(ValueError, match="must be \\(height, width\\)"):
        ImageList(torch.zeros(1, 3, 8, 8), [(8,)])


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([], ValueError, "is empty"),
        ([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)], ValueError, "3 channels but images\\[1\\]"),
        ([torch.zeros(4, 4)], ValueError, "image\\[None\\]"),
        ([torch.zeros(1, 3, 4, 4)], ValueError, "can be passed as it is"),
        (torch.zeros(3, 4, 4), ValueError, "\\[image\\]"),
        ([torch.zeros(3, 0, 4)], ValueError, "is empty"),
        ([torch.zeros(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.float64)], ValueError, "dtype"),
        ([torch.zeros(3, 4, 4), torch.zeros(3, 4, 4, device="meta")], ValueError, "device"),
        ([[0.0]], TypeError, "must be a torch.Tensor"),
        ("image", TypeError, "list of"),
    ],
)
def test_from_tensors_errors(images, error, match):
    with pytest.raises(error, match=match):
        ImageList.from_tensors(images)


@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_bad_size_divisible(bad):
    with pytest.raises((TypeError, ValueError), match="size_divisible"):
        ImageList.from_tensors([torch.zeros(3, 4, 4)], size_divisible=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda():
    images = [img.to("cuda") for img in random_images([(30, 50), (41, 17)])]
    batch = ImageList.from_tensors(images)
    assert batch.tensors.device.type == "cuda"
    expected = TV_TRANSFORM.batch_images(images, 32)
    torch.testing.assert_close(batch.tensors, expected, rtol=0, atol=0)
    assert torch.equal(batch.to("cpu").tensors, batch.tensors.cpu())
