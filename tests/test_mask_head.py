import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import mask_rcnn as tv_mask_rcnn
from torchvision.models.detection import roi_heads as tv

from rcnn_steps.modeling.mask_head import (
    MaskBranch,
    MaskMLPHead,
    MaskMLPPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    mask_accuracy,
    maskrcnn_inference,
    maskrcnn_loss,
    maskrcnn_softmax_loss,
    paste_masks_in_image,
    paste_masks_in_windows,
    project_masks_on_boxes,
)
from rcnn_steps.modeling.poolers import RoIPooler


def _masks(g, n=3, size=64):
    return (torch.rand(n, size, size, generator=g) > 0.6).to(torch.uint8)


def _boxes(g, n, lo=-8.0, hi=60.0, min_wh=0.2, max_wh=30.0):
    xy = torch.rand(n, 2, generator=g) * (hi - lo) + lo
    wh = torch.rand(n, 2, generator=g) * (max_wh - min_wh) + min_wh
    return torch.cat([xy, xy + wh], dim=1)


def test_project_masks_on_boxes_equals_torchvision_on_edge_cases():
    g = torch.Generator().manual_seed(0)
    masks = _masks(g)
    boxes = _boxes(g, 40)
    boxes[0] = torch.tensor([-10.0, -5.0, 20.0, 15.0])  # partly outside the image
    boxes[1] = torch.tensor([50.0, 55.0, 80.0, 90.0])  # past the bottom-right corner
    boxes[2] = torch.tensor([10.0, 10.0, 10.3, 10.2])  # sub-pixel
    idx = torch.randint(0, 3, (40,), generator=g)
    ours = project_masks_on_boxes(masks, boxes, idx, 28)
    assert ours.shape == (40, 28, 28) and ours.min() >= 0 and ours.max() <= 1
    torch.testing.assert_close(ours, tv.project_masks_on_boxes(masks, boxes, idx, 28))
    # the whole-image box of a full mask is all ones
    full = torch.ones(1, 32, 32, dtype=torch.uint8)
    one = project_masks_on_boxes(full, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.zeros(1), 8)
    torch.testing.assert_close(one, torch.ones(1, 8, 8))
    # no RoIs
    assert project_masks_on_boxes(masks, torch.zeros(0, 4), torch.zeros(0), 28).shape == (0, 28, 28)


def _loss_inputs(g, num_masks=7, m=28):
    masks = [_masks(g), _masks(g, 2)]
    labels = [torch.tensor([1, 6, 3]), torch.tensor([2, 2])]
    proposals = [_boxes(g, 5, 0, 50), _boxes(g, 4, 0, 50)]
    matched = [torch.tensor([0, 2, 1, 1, 0]), torch.tensor([1, 0, 1, 1])]
    logits = torch.randn(9, num_masks, m, m, generator=g, requires_grad=True)
    return logits, proposals, masks, labels, matched


def test_maskrcnn_loss_equals_torchvision_and_only_the_true_class_gets_gradient():
    g = torch.Generator().manual_seed(1)
    logits, proposals, masks, labels, matched = _loss_inputs(g)
    ours = maskrcnn_loss(logits, proposals, masks, labels, matched)
    torch.testing.assert_close(ours, tv.maskrcnn_loss(logits, proposals, masks, labels, matched))
    (grad,) = torch.autograd.grad(ours, logits)
    roi_class = torch.cat([lab[m] for lab, m in zip(labels, matched, strict=True)])
    touched = grad.abs().sum(dim=(2, 3)) > 0  # (R, K + 1)
    expected = F.one_hot(roi_class, 7).bool()
    assert torch.equal(touched, expected)  # the sigmoid loss decouples the classes


def test_class_agnostic_loss_reads_the_one_channel():
    g = torch.Generator().manual_seed(2)
    logits, proposals, masks, labels, matched = _loss_inputs(g, num_masks=1)
    ours = maskrcnn_loss(logits, proposals, masks, labels, matched)
    # the same as a per-class loss whose every class has that one map
    expanded = logits.expand(-1, 7, -1, -1)
    torch.testing.assert_close(ours, maskrcnn_loss(expanded, proposals, masks, labels, matched))


def test_softmax_loss_by_hand_and_its_gradient_reaches_every_class():
    g = torch.Generator().manual_seed(3)
    logits, proposals, masks, labels, matched = _loss_inputs(g, num_masks=7, m=14)
    loss = maskrcnn_softmax_loss(logits, proposals, masks, labels, matched)
    # by hand: soft cross-entropy with p(class k) = t, p(background) = 1 - t
    triples = zip(masks, proposals, matched, strict=True)
    targets = torch.cat([project_masks_on_boxes(m, p, i, 14) for m, p, i in triples])
    k = torch.cat([lab[i] for lab, i in zip(labels, matched, strict=True)])
    soft = torch.zeros_like(logits)
    soft[torch.arange(9), k] = targets
    soft[:, 0] += 1 - targets
    by_hand = F.cross_entropy(logits, soft)
    torch.testing.assert_close(loss, by_hand)
    # hard targets reduce it to the per-pixel multinomial loss of an FCN
    hard_targets = (targets >= 0.5).long() * k[:, None, None]
    hard_soft = F.one_hot(hard_targets, 7).permute(0, 3, 1, 2).float()
    assert torch.isclose(F.cross_entropy(logits, hard_soft), F.cross_entropy(logits, hard_targets))
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad.abs().sum(dim=(2, 3)) > 0).all()  # the classes compete: all get gradient
    with pytest.raises(ValueError, match="class-agnostic masks go with the sigmoid"):
        maskrcnn_softmax_loss(logits[:, :1], proposals, masks, labels, matched)


def test_losses_without_positive_rois_are_zero_with_a_graph():
    logits = torch.randn(0, 7, 28, 28, requires_grad=True)
    empty = [torch.zeros(0, 4)]
    for fn in (maskrcnn_loss, maskrcnn_softmax_loss):
        none = [torch.zeros(0, dtype=torch.long)]
        loss = fn(logits, empty, [torch.zeros(0, 8, 8)], none, none)
        assert loss.item() == 0 and loss.requires_grad


def test_inference_equals_torchvision_and_picks_the_predicted_class():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 7, 28, 28, generator=g)
    labels = [torch.tensor([1, 6]), torch.tensor([3, 3, 2])]
    ours = maskrcnn_inference(logits, labels)
    theirs = tv.maskrcnn_inference(logits, labels)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert ours[0].shape == (2, 1, 28, 28)
    torch.testing.assert_close(ours[1][0, 0], logits[2, 3].sigmoid())
    soft = maskrcnn_inference(logits, labels, "softmax")
    torch.testing.assert_close(soft[0][1, 0], logits[1].softmax(0)[6])
    agnostic = maskrcnn_inference(logits[:, :1], labels)
    torch.testing.assert_close(agnostic[1][2, 0], logits[4, 0].sigmoid())
    with pytest.raises(ValueError, match="loss must be one of"):
        maskrcnn_inference(logits, labels, "relu")


def test_paste_masks_equals_torchvision():
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(60, 1, 28, 28, generator=g)
    boxes = _boxes(g, 60, 0, 110, 0.3, 60)
    boxes[0] = torch.tensor([-5.0, -3.0, 20.0, 10.0])  # partly outside
    boxes[1] = torch.tensor([100.0, 110.0, 140.5, 131.9])  # past the corner
    boxes[2] = torch.tensor([10.0, 10.0, 10.2, 10.3])  # sub-pixel
    for padding in (1, 0, 2):
        ours = paste_masks_in_image(masks, boxes, (128, 120), padding)
        assert ours.shape == (60, 1, 128, 120)
        torch.testing.assert_close(ours, tv.paste_masks_in_image(masks, boxes, (128, 120), padding))
    assert paste_masks_in_image(masks[:0], boxes[:0], (32, 48)).shape == (0, 1, 32, 48)
    # entirely outside the image (torchvision raises there): nothing is pasted
    far = paste_masks_in_image(masks[:1], torch.tensor([[-30.0, 5.0, -10.0, 20.0]]), (32, 32))
    assert far.abs().sum() == 0


def test_paste_puts_a_full_mask_on_its_box():
    mask = torch.ones(1, 1, 28, 28)
    pasted = paste_masks_in_image(mask, torch.tensor([[10.0, 20.0, 40.0, 30.0]]), (64, 64))[0, 0]
    inside = pasted[21:30, 11:40]
    assert (inside > 0.99).all() and pasted[:15].sum() == 0 and pasted[:, 45:].sum() == 0


@pytest.mark.parametrize("aligned", [False, True])
def test_paste_in_windows_equals_the_full_paste(aligned):
    """Each mask pasted over its window only: the same values there, and the full paste
    is 0 everywhere else (boxes partly or wholly outside the image, sub-pixel ones)."""
    g = torch.Generator().manual_seed(7)
    masks = torch.rand(40, 1, 14, 14, generator=g)
    boxes = _boxes(g, 40, -20, 110, 0.3, 60)
    boxes[0] = torch.tensor([-30.0, 5.0, -10.0, 20.0])  # entirely outside
    boxes[1] = torch.tensor([10.0, 10.0, 10.2, 10.3])  # sub-pixel
    full = paste_masks_in_image(masks, boxes, (96, 120), aligned=aligned)[:, 0]
    windows = list(paste_masks_in_windows(masks, boxes, (96, 120), aligned=aligned))
    assert len(windows) == 40
    for i, (window, (top, left)) in enumerate(windows):
        canvas = torch.zeros(96, 120)
        canvas[top : top + window.shape[0], left : left + window.shape[1]] = window
        torch.testing.assert_close(canvas, full[i], atol=1e-5, rtol=0)
        if i > 1:  # the window is about the box, not the image
            w, h = (boxes[i, 2:] - boxes[i, :2]).tolist()
            assert window.shape[0] <= h * 1.2 + 5 and window.shape[1] <= w * 1.2 + 5
    assert windows[0][0].numel() == 0


def test_mask_branch_can_leave_masks_unpasted():
    g = torch.Generator().manual_seed(3)
    pooler = RoIPooler("roialign_avg", 14)
    branch = MaskBranch(pooler, MaskRCNNHeads(8, (8,)), MaskRCNNPredictor(8, 8, 3))
    logits = torch.randn(2, 3, 28, 28, generator=g)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 20.0], [10.0, 0.0, 50.0, 40.0]])
    pasted = [{"boxes": boxes, "labels": torch.tensor([1, 2])}]
    branch.predict(logits, pasted, [(64, 64)])
    branch.paste = False
    unpasted = [{"boxes": boxes, "labels": torch.tensor([1, 2])}]
    probs = branch.predict(logits, unpasted, [(64, 64)])
    assert "masks" not in unpasted[0] and unpasted[0]["mask_probs"].shape == (2, 1, 28, 28)
    torch.testing.assert_close(unpasted[0]["mask_probs"], probs[0])
    again = paste_masks_in_image(unpasted[0]["mask_probs"], boxes, (64, 64))
    torch.testing.assert_close(again, pasted[0]["masks"])


def test_heads_load_torchvision_weights_and_agree():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 14, 14)
    theirs = tv_mask_rcnn.MaskRCNNHeads(16, [8, 8, 8, 8], 1)
    ours = MaskRCNNHeads(16, (8, 8, 8, 8))
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    tv_pred = tv_mask_rcnn.MaskRCNNPredictor(8, 8, 7)
    pred = MaskRCNNPredictor(8, 8, 7)
    pred.load_state_dict(tv_pred.state_dict())
    out = pred(ours(x))
    assert out.shape == (3, 7, 28, 28)
    torch.testing.assert_close(out, tv_pred(theirs(x)))


def test_mlp_head_shapes():
    head = MaskMLPHead(16 * 14 * 14, 32, num_layers=3)
    pred = MaskMLPPredictor(32, 7, 28)
    assert len(head.fcs) == 3
    assert pred(head(torch.randn(4, 16, 14, 14))).shape == (4, 7, 28, 28)
    with pytest.raises(ValueError, match="num_layers"):
        MaskMLPHead(10, 4, 0)


def test_branch_checks_targets_and_reports_accuracy():
    torch.manual_seed(0)
    branch = MaskBranch(
        RoIPooler("roialign_avg", 14), MaskRCNNHeads(4, (8,)), MaskRCNNPredictor(8, 8, 3)
    )
    feature = torch.randn(1, 4, 16, 16)
    rois = [torch.tensor([[4.0, 4.0, 40.0, 30.0]])]
    logits = branch(feature, rois, (64, 64))
    assert logits.shape == (1, 3, 28, 28)
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\].*load_masks=True"):
        no_masks = {"boxes": rois[0], "labels": torch.tensor([1])}
        branch.loss(logits, rois, [torch.tensor([0])], [no_masks])
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 4:30, 4:22] = 1
    target = {"boxes": rois[0], "labels": torch.tensor([2]), "masks": masks}
    loss = branch.loss(logits, rois, [torch.tensor([0])], [target])
    assert loss > 0
    t = project_masks_on_boxes(masks, rois[0], torch.tensor([0]), 28)
    perfect = (t * 40 - 20)[:, None].expand(-1, 3, -1, -1)
    stats = mask_accuracy(perfect, torch.tensor([2]), t)
    assert stats["accuracy"] == 1.0 and stats["false_positive"] == 0 == stats["false_negative"]
    inverted = mask_accuracy(-perfect, torch.tensor([2]), t)
    assert inverted["false_negative"] == 1.0
    with pytest.raises(ValueError, match="loss must be one of"):
        MaskBranch(branch.pooler, branch.head, branch.predictor, loss="dice")


def test_aligned_round_trip_keeps_a_mask_and_the_legacy_rule_shifts_it():
    """A rectangle mask cut out along its own box and pasted back: exact with the
    aligned rule; the legacy rule (a box one pixel too large) grows it."""
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:22, 5:30] = 1  # pixels 5..29 x 10..21: the box [5, 10, 30, 22]
    box = torch.tensor([[5.0, 10.0, 30.0, 22.0]])
    results = {}
    for aligned in (True, False):
        target = project_masks_on_boxes(mask, box, torch.zeros(1, dtype=torch.long), 28, aligned)
        back = paste_masks_in_image(target[:, None], box, (40, 40), aligned=aligned)[0, 0] >= 0.5
        truth = mask[0].bool()
        results[aligned] = float((back & truth).sum() / (back | truth).sum())
    assert results[True] == 1.0
    assert results[False] < 0.97
    # aligned pasting of an all-ones mask fills exactly the box's pixels (at 0.5)
    ones = paste_masks_in_image(torch.ones(1, 1, 28, 28), box, (40, 40), aligned=True)[0, 0]
    assert torch.equal(ones >= 0.5, mask[0].bool())
    assert paste_masks_in_image(torch.ones(0, 1, 28, 28), box[:0], (8, 8), aligned=True).shape == (
        0,
        1,
        8,
        8,
    )


def test_aligned_targets_are_the_half_pixel_shifted_roi_align():
    from rcnn_steps.ops import roi_align

    g = torch.Generator().manual_seed(9)
    masks = _masks(g)
    boxes = _boxes(g, 10, 0, 40)
    idx = torch.randint(0, 3, (10,), generator=g)
    ours = project_masks_on_boxes(masks, boxes, idx, 14, aligned=True)
    rois = torch.cat([idx[:, None].float(), boxes], dim=1)
    expected = roi_align(masks[:, None].float(), rois, 14, 1.0, -1, aligned=True)[:, 0]
    torch.testing.assert_close(ours, expected.clamp(0, 1))
