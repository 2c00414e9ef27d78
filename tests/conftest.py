import pytest
import torch

from rcnn_steps.data import generate


@pytest.fixture(autouse=True)
def _fixed_threads():
    # the same thread count as the book, so float sums match run to run
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A small synthetic set (24 train, 8 val images of 64 px) shared by the tests."""
    root = tmp_path_factory.mktemp("synth")
    return generate(root, num_train=24, num_val=8, size=64, seed=3, workers=1)
