import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads

from rcnn_steps.modeling.losses import fastrcnn_loss, rpn_loss, smooth_l1_loss


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_smooth_l1_equals_torch(beta, reduction):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=g) * 2, torch.randn(50, 4, generator=g)
    ours = smooth_l1_loss(a, b, beta, reduction)
    torch.testing.assert_close(ours, F.smooth_l1_loss(a, b, beta=beta, reduction=reduction))


def test_smooth_l1_gradient_matches_torch():
    a = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, 4, dtype=torch.float64)
    (ga,) = torch.autograd.grad(smooth_l1_loss(a, b, 1 / 9), a)
    (gb,) = torch.autograd.grad(F.smooth_l1_loss(a, b, beta=1 / 9, reduction="sum"), a)
    torch.testing.assert_close(ga, gb)


def test_fastrcnn_loss_equals_torchvision():
    g = torch.Generator().manual_seed(1)
    r, k1 = 40, 7
    logits = torch.randn(r, k1, generator=g)
    deltas = torch.randn(r, 4 * k1, generator=g)
    labels = [torch.randint(0, k1, (25,), generator=g), torch.randint(0, k1, (15,), generator=g)]
    targets = [torch.randn(25, 4, generator=g), torch.randn(15, 4, generator=g)]
    ours = fastrcnn_loss(logits, deltas, labels, targets)
    theirs = tv_roi_heads.fastrcnn_loss(logits, deltas, labels, targets)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_rpn_loss_normalisations():
    g = torch.Generator().manual_seed(2)
    n = 100
    obj, deltas, targets = (
        torch.randn(n, generator=g),
        torch.randn(n, 4, generator=g),
        torch.randn(n, 4, generator=g),
    )
    labels = torch.full((n,), -1.0)
    labels[:10], labels[10:40] = 1.0, 0.0
    cls_tv, box_tv = rpn_loss(obj, deltas, labels, targets)
    s = labels >= 0
    torch.testing.assert_close(cls_tv, F.binary_cross_entropy_with_logits(obj[s], labels[s]))
    box_sum = F.smooth_l1_loss(deltas[:10], targets[:10], beta=1 / 9, reduction="sum")
    torch.testing.assert_close(box_tv, box_sum / 40)
    # The paper: lambda / N_reg with N_reg the number of anchor locations, beta = 1.
    cls_p, box_p = rpn_loss(obj, deltas, labels, targets, 10.0, "paper", num_anchor_locations=25)
    torch.testing.assert_close(cls_p, cls_tv)
    box_sum1 = F.smooth_l1_loss(deltas[:10], targets[:10], beta=1.0, reduction="sum")
    torch.testing.assert_close(box_p, 10.0 * box_sum1 / 25)
    with pytest.raises(ValueError, match="num_anchor_locations"):
        rpn_loss(obj, deltas, labels, targets, 10.0, "paper")
    with pytest.raises(ValueError, match="normalization"):
        rpn_loss(obj, deltas, labels, targets, 1.0, "detectron")


def test_rpn_loss_no_positives_and_nothing_sampled():
    obj, deltas = torch.zeros(5, requires_grad=True), torch.zeros(5, 4)
    cls, box = rpn_loss(obj, deltas, torch.zeros(5), torch.zeros(5, 4))
    assert box.item() == 0 and torch.isfinite(cls)
    cls, box = rpn_loss(obj, deltas, -torch.ones(5), torch.zeros(5, 4))
    assert cls.item() == 0 and box.item() == 0
