"""Image lists: a batch of images of different sizes as one padded tensor, plus their sizes.

A convolutional backbone wants one ``(N, C, H, W)`` tensor, but detection images come in
different sizes (and are not resized to a square, which would distort the objects the
anchors are shaped for). The standard answer, from Detectron to torchvision, is to pad
every image at the bottom and right up to the largest height and width in the batch,
rounded up to a multiple of the backbone's total stride, and to remember each image's true
size: the RPN clips proposals to it and the anchors that fall in the padding are just
anchors over an empty (``pad_value``) border.

Taught in chapter 04 ("Faster R-CNN and the RPN"), where the first model takes a batch of
images of several sizes. Equals torchvision's ``ImageList`` together with the batching of
``GeneralizedRCNNTransform.batch_images`` (without its resizing and normalisation, which
are separate steps here), tested bit for bit in ``tests/test_image_list.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ImageList"]


class ImageList:
    """A padded batch of images and the true ``(height, width)`` of each.

    Args:
        tensors: ``(N, C, H, W)`` the padded batch. Image i occupies
            ``tensors[i, :, :h_i, :w_i]``; the rest is padding.
        image_sizes: N pairs ``(h_i, w_i)``, the sizes before padding (torch's order,
            height first).

    Build one with :meth:`from_tensors`; the constructor only checks that the two agree.
    The attribute names are torchvision's, so an :class:`ImageList` can be handed to
    torchvision's RPN and RoI heads, and theirs to ours.

    A single ``(C, H, W)`` image with one size is taken as a batch of one (``tensors``
    becomes ``(1, C, H, W)``): torchvision's ``ImageList`` holds such a tensor as it is and
    its anchor generator reads only the last two dimensions, so code written for it runs
    here too. Any other number of dimensions, or a 3-D tensor with several sizes, is a
    ``ValueError`` that says what to pass.
    """

    def __init__(self, tensors: Tensor, image_sizes: Sequence[tuple[int, int]]) -> None:
        if isinstance(tensors, Tensor) and tensors.dim() == 3 and len(image_sizes) == 1:
            tensors = tensors[None]  # one (C, H, W) image: a batch of one
        if not isinstance(tensors, Tensor) or tensors.dim() != 4:
            shape = tuple(tensors.shape) if isinstance(tensors, Tensor) else type(tensors).__name__
            raise ValueError(
                f"ImageList: tensors must be a padded batch of shape (N, C, H, W) (or one "
                f"(C, H, W) image with one size), got {shape} with {len(image_sizes)} "
                "image sizes; build a batch from a list of (C, H, W) images with "
                "ImageList.from_tensors(images)."
            )
        if len(image_sizes) != tensors.shape[0]:
            raise ValueError(
                f"ImageList: the batch holds {tensors.shape[0]} images but image_sizes has "
                f"{len(image_sizes)} entries; give one (height, width) per image."
            )
        sizes = []
        for i, size in enumerate(image_sizes):
            if len(size) != 2:
                raise ValueError(
                    f"ImageList: image_sizes[{i}] must be (height, width), got {size!r}."
                )
            h, w = (int(s) for s in size)
            if not (0 < h <= tensors.shape[-2] and 0 < w <= tensors.shape[-1]):
                raise ValueError(
                    f"ImageList: image_sizes[{i}] = {(h, w)} does not fit the padded batch of "
                    f"size {tuple(tensors.shape[-2:])}; sizes are the images' true (height, "
                    "width) before padding."
                )
            sizes.append((h, w))
        self.tensors = tensors
        self.image_sizes: list[tuple[int, int]] = sizes

    @classmethod
    def from_tensors(
        cls,
        images: Sequence[Tensor] | Tensor,
        size_divisible: int = 32,
        pad_value: float = 0.0,
    ) -> ImageList:
        """Pad images to a common size and stack them.

        Args:
            images: N images, each ``(C, H, W)`` with the same C, dtype and device (a
                list; a ``(N, C, H, W)`` tensor is taken as its N images).
            size_divisible: the padded height and width are rounded up to a multiple of
                this. Use the backbone's total stride (32 for a ResNet with C5 or FPN): a
                stride-s network then sees exactly ``H / s`` cells, so feature cell (y, x)
                sits at pixel ``(s * y, s * x)`` and the anchors line up with the features
                in every image of the batch. 1 (or 0, detectron2's spelling) pads only to
                the largest image.
            pad_value: the value written into the padding. 0 is right for images already
                normalised to zero mean (torchvision normalises before batching, as we
                expect you to).

        Returns:
            An :class:`ImageList` of ``(N, C, H_pad, W_pad)`` with
            ``H_pad = ceil(max_i H_i / size_divisible) * size_divisible`` (the same for
            W), the images in the top-left corner, in the images' dtype and device.
        """
        images = _check_images(images)
        if isinstance(size_divisible, bool) or not isinstance(size_divisible, int):
            raise TypeError(
                f"ImageList.from_tensors: size_divisible must be an int such as 32, got "
                f"{size_divisible!r}."
            )
        if size_divisible < 0:
            raise ValueError(
                f"ImageList.from_tensors: size_divisible must be >= 0, got {size_divisible}; "
                "use 1 (or 0) for no rounding."
            )
        divisor = max(size_divisible, 1)
        channels = images[0].shape[0]
        max_h = max(img.shape[1] for img in images)
        max_w = max(img.shape[2] for img in images)
        # Integer ceiling; torchvision's float ceil gives the same for any real image size.
        pad_h = math.ceil(max_h / divisor) * divisor
        pad_w = math.ceil(max_w / divisor) * divisor

        batch = images[0].new_full((len(images), channels, pad_h, pad_w), pad_value)
        for i, img in enumerate(images):
            # Top-left corner: pixel (y, x) of every image stays at (y, x), so boxes in
            # image coordinates need no shift after batching.
            batch[i, :, : img.shape[1], : img.shape[2]].copy_(img)
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        return cls(batch, sizes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageList:
        """The same batch on ``device`` (sizes are plain ints and stay as they are)."""
        return ImageList(self.tensors.to(device, non_blocking=non_blocking), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, i: int) -> Tensor:
        """Image ``i`` without its padding: a ``(C, h_i, w_i)`` view of the batch."""
        h, w = self.image_sizes[i]
        return self.tensors[i, :, :h, :w]

    @property
    def device(self) -> torch.device:
        return self.tensors.device

    def __repr__(self) -> str:
        return (
            f"ImageList(tensors={tuple(self.tensors.shape)} {self.tensors.dtype} on "
            f"{self.tensors.device}, image_sizes={self.image_sizes})"
        )


def _check_images(images: object) -> list[Tensor]:
    """The images as a non-empty list of (C, H, W) tensors that agree on C, dtype, device."""
    fn = "ImageList.from_tensors"
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"{fn}: images must be a list of (C, H, W) tensors or one (N, C, H, W) "
                f"batch, got a tensor of shape {tuple(images.shape)}"
                + ("; wrap a single image in a list: [image]." if images.dim() == 3 else ".")
            )
        images = list(images.unbind(0))
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(
            f"{fn}: images must be a list of (C, H, W) tensors, got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"{fn}: images is empty; a batch needs at least one image.")
    first = images[0]
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise TypeError(
                f"{fn}: images[{i}] must be a torch.Tensor, got {type(img).__name__}; convert "
                "PIL images with torchvision.transforms.functional.to_tensor."
            )
        if img.dim() != 3:
            hint = (
                " A grey image needs a channel dimension: image[None]."
                if img.dim() == 2
                else " An (N, C, H, W) batch can be passed as it is, not inside a list."
                if img.dim() == 4
                else ""
            )
            raise ValueError(
                f"{fn}: images[{i}] must have shape (C, H, W), got {tuple(img.shape)}.{hint}"
            )
        if img.shape[1] == 0 or img.shape[2] == 0:
            raise ValueError(f"{fn}: images[{i}] is empty, shape {tuple(img.shape)}.")
        if img.shape[0] != first.shape[0]:
            raise ValueError(
                f"{fn}: images[0] has {first.shape[0]} channels but images[{i}] has "
                f"{img.shape[0]}; convert them to one format first (e.g. grey to RGB with "
                "image.expand(3, -1, -1)). Is one of them (H, W, C) instead of (C, H, W)?"
            )
        if img.dtype != first.dtype:
            raise ValueError(
                f"{fn}: images[0] is {first.dtype} but images[{i}] is {img.dtype}; convert "
                "them to one dtype first (e.g. torchvision.transforms.functional."
                "convert_image_dtype)."
            )
        if img.device != first.device:
            raise ValueError(
                f"{fn}: images[0] is on {first.device} but images[{i}] is on {img.device}; "
                "move them to one device first."
            )
    return list(images)
