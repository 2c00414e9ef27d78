"""Balanced sampling: which labelled anchors or proposals a training step looks at.

An image has tens of thousands of anchors and only a handful of objects, so nearly every
anchor is background. Training on all of them lets the negatives swamp the loss, so the
R-CNN family samples a fixed-size mini-batch per image with a capped share of positives:

- RPN (Faster R-CNN section 3.1.3, "Training RPNs"): "we randomly sample 256 anchors in
  an image to compute the loss function of a mini-batch, where the sampled positive and
  negative anchors have a ratio of up to 1:1. If there are fewer than 128 positive
  samples in an image, we pad the mini-batch with negative ones." That is
  ``BalancedPositiveNegativeSampler(256, 0.5)``, the defaults here.
- RoI heads (Fast R-CNN section 2.3, "Mini-batch sampling"): 25% of the RoIs from
  foreground proposals, the rest background. Fast R-CNN took 64 RoIs per image; Mask
  R-CNN (section 3.1, "Training") 64 with the C4 backbone and 512 with FPN, and 512 at
  0.25 is torchvision's and Detectron's default: ``BalancedPositiveNegativeSampler(512,
  0.25)``.

Taught in chapter 04 ("Faster R-CNN and the RPN"); the RoI heads of chapters 04-07 reuse
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

__all__ = ["BalancedPositiveNegativeSampler"]


class BalancedPositiveNegativeSampler:
    """Sample at most ``batch_size_per_image`` labelled elements per image, of which at
    most ``positive_fraction`` are positives.

    Args:
        batch_size_per_image: elements per image (256 for the RPN, 512 for RoI heads).
        positive_fraction: the largest share of positives (0.5 for the RPN, 0.25 for RoI
            heads). Positives are capped at ``int(batch_size_per_image *
            positive_fraction)``; the rest of the batch is filled with negatives, so an
            image with few objects still gets a full batch.
        generator: the ``torch.Generator`` to draw from on every call that gives none;
            None uses torch's global generator of the labels' device (what torchvision
            does), so ``torch.manual_seed`` makes the draws repeat.

    Calling it on a list of per-image labels (>= 1 positive, 0 negative, < 0 ignored, as
    :func:`rcnn_steps.modeling.matcher.label_anchors` makes them) returns two lists of boolean
    masks, the sampled positives and the sampled negatives of each image.

    Equals ``torchvision.models.detection._utils.BalancedPositiveNegativeSampler``: the
    same counts and, with the global generator, the same draws (it is the same sequence
    of ``torch.randperm`` calls). The masks are ``torch.bool`` rather than torchvision's
    ``torch.uint8``: a uint8 mask used as an index is deprecated in PyTorch, while a bool
    one indexes directly (``anchors[pos_mask]``) and works with ``torch.where`` as
    torchvision's heads use it.
    """

    def __init__(
        self,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        if (
            isinstance(batch_size_per_image, bool)
            or not isinstance(batch_size_per_image, int)
            or batch_size_per_image < 0
        ):
            raise ValueError(
                f"BalancedPositiveNegativeSampler: batch_size_per_image must be an int >= 0 "
                f"(256 for the RPN, 512 for RoI heads), got {batch_size_per_image!r}."
            )
        if (
            isinstance(positive_fraction, bool)
            or not isinstance(positive_fraction, Real)
            or not 0 <= positive_fraction <= 1
        ):
            raise ValueError(
                f"BalancedPositiveNegativeSampler: positive_fraction must be in [0, 1] (0.5 "
                f"for the RPN, 0.25 for RoI heads), got {positive_fraction!r}."
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    @property
    def max_positives(self) -> int:
        """The cap on positives per image, ``int(batch_size_per_image * positive_fraction)``
        (torchvision's rounding: down)."""
        return int(self.batch_size_per_image * self.positive_fraction)

    def __call__(
        self, labels: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample each image's positives and negatives.

        Args:
            labels: one ``(N_i,)`` tensor per image: >= 1 positive (a class id, or 1 for
                objectness), 0 negative, -1 (any negative value) ignored. Integer or
                float (the RPN's labels are float).
            generator: draw from this ``torch.Generator`` (on any device) instead of
                the sampler's own or torch's global one; pass a seeded one for
                reproducible samples.

        Returns:
            ``(pos_masks, neg_masks)``: two lists with one ``(N_i,)`` bool tensor per
            image, on the labels' device. Per image, ``pos_mask.sum() = min(#positives,
            max_positives)`` and ``neg_mask.sum() = min(#negatives, batch_size_per_image
            - pos_mask.sum())``; the two masks are disjoint and never select an ignored
            element. Which positives and negatives is uniform at random.
        """
        fn = "BalancedPositiveNegativeSampler"
        if isinstance(labels, Tensor):
            raise TypeError(f"{fn}: labels must be a list of per-image tensors; wrap one in [].")
        generator = generator if generator is not None else self.generator
        pos_masks, neg_masks = [], []
        for i, labels_i in enumerate(labels):
            if not isinstance(labels_i, Tensor) or labels_i.dim() != 1:
                shape = tuple(labels_i.shape) if isinstance(labels_i, Tensor) else labels_i
                raise ValueError(f"{fn}: labels[{i}] must be a 1-D tensor, got {shape!r}.")
            positive = torch.where(labels_i >= 1)[0]
            negative = torch.where(labels_i == 0)[0]

            num_pos = min(positive.numel(), self.max_positives)
            # Fill the rest of the batch with negatives (Faster R-CNN 3.1.3 "pad with
            # negative ones"), as many as there are.
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)

            # A random permutation, cut: a uniform sample without replacement. Always
            # two draws per image, positives first, like torchvision, so the same seed
            # gives the same samples as torchvision.
            pos_perm = self._randperm(positive.numel(), generator, positive.device)[:num_pos]
            neg_perm = self._randperm(negative.numel(), generator, negative.device)[:num_neg]

            pos_mask = torch.zeros_like(labels_i, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_i, dtype=torch.bool)
            pos_mask[positive[pos_perm]] = True
            neg_mask[negative[neg_perm]] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    @staticmethod
    def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        if generator is None:
            return torch.randperm(n, device=device)
        # A generator draws on its own device; the indices then move to the labels'.
        return torch.randperm(n, generator=generator, device=generator.device).to(device)
