import torch

from rcnn_steps.data import CATEGORIES, flip_pairs_by_label, horizontal_flip
from rcnn_steps.data.transforms import RandomHorizontalFlip


def _target():
    kps = torch.zeros(2, 3, 3)
    kps[0] = torch.tensor([[1.0, 5.0, 2], [2.0, 5.0, 2], [3.0, 5.0, 1]])  # a "cat": 2 + 1
    kps[1] = torch.tensor([[4.0, 6.0, 2], [5.0, 6.0, 2], [6.0, 6.0, 0]])  # a "bird": 3
    return {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 8.0], [3.0, 2.0, 7.0, 9.0]]),
        "labels": torch.tensor([1, 2]),
        "keypoints": kps,
    }


def test_flip_pairs_per_class_swap_each_objects_own_keypoints():
    image = torch.rand(3, 10, 10)
    _, flipped = horizontal_flip(image, _target(), {1: [(0, 1)], 2: [(0, 2)]})
    kps = flipped["keypoints"]
    # x' = W - x for labelled points, then each object's own pairs swapped
    assert kps[0, :, 0].tolist() == [8.0, 9.0, 7.0]
    # object 2: its unlabelled third point keeps its x, then the (0, 2) swap moves it
    assert kps[1, :, 0].tolist() == [6.0, 5.0, 6.0] and kps[1, :, 2].tolist() == [0, 2, 2]
    # a single list applies to every object alike
    _, same = horizontal_flip(image, _target(), [(0, 1)])
    assert same["keypoints"][1, :, 0].tolist() == [5.0, 6.0, 6.0]
    # flipping twice restores the target
    _, back = horizontal_flip(image.flip(-1), flipped, {1: [(0, 1)], 2: [(0, 2)]})
    torch.testing.assert_close(back["keypoints"], _target()["keypoints"])


def test_flip_pairs_by_label_of_the_synthetic_set():
    pairs = flip_pairs_by_label(CATEGORIES)
    assert list(pairs) == [6]  # only the person has keypoints
    assert pairs[6] == [(2, 3), (4, 5), (7, 8), (9, 10)]
    flip = RandomHorizontalFlip(1.0, pairs)
    assert "6:" in repr(flip)
