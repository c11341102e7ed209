"""Training augmentations on whole batches of image tensors, on the tensors' device.

``crop-flip`` is the standard CIFAR / Tiny ImageNet augmentation: pad each side by ``padding``
pixels, take a random crop of the original size, and flip it horizontally with probability 1/2.
The images here are already normalized, and the padding is 0 *in normalized space*, which is
the data set's mean colour (torchvision's ``RandomCrop(32, padding=4)`` on unnormalized images
pads with black, i.e. ``-mean / std`` after normalization). Padding with the mean needs no knowledge
of the normalization and keeps the pad neutral (zero input) for the first layer.

The random draws (one offset pair and one flip bit per image) come from the CPU ``generator``
only, in a fixed order, so a batch is augmented identically for a given generator state on any
device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SparseddError

AUGMENTATIONS = ("none", "crop-flip")


def crop_flip_draws(b: int, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The random draws of :func:`crop_flip` for ``b`` images, as one CPU tensor [3, B]: row offsets,
    column offsets, flip bits (a captured training step copies them into a static tensor)."""
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)  # rows, then columns
    flips = torch.randint(0, 2, (b,), generator=generator)
    return torch.cat([offsets, flips[None]])


def crop_flip_apply(x: torch.Tensor, draws: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """The crops and flips that ``draws`` [3, B] (:func:`crop_flip_draws`) say, computed on ``x``'s
    device with no value read back to the host."""
    b, c, h, w = x.shape
    dev = x.device
    draws = draws.to(dev)
    dy, dx, flips = draws[0], draws[1], draws[2].bool()
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]: rows of the padded image
    cols = dx[:, None] + torch.arange(w, device=dev)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # gather rows, then columns: [B, C, H, W+2p] then [B, C, H, W]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crops of the zero-padded images, each flipped left-right with probability 1/2.

    ``x``: [B, C, H, W]; the result has the same shape, dtype and device (``x`` is left as is).
    """
    if x.ndim != 4:
        raise ValueError(f"crop_flip expects images [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return crop_flip_apply(x, crop_flip_draws(x.shape[0], generator, padding), padding)


def augment_batch(kind: str, x: torch.Tensor, generator: torch.Generator,
                  span: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``x`` augmented by ``kind`` (``none``: ``x`` itself, no random draw). ``span = (start, stop, n)``: ``x``
    is images start to stop of a batch of n (a data-parallel process's part), and each image gets the draws
    it has in the whole batch: the processes' draws differ, and together are those of one process."""
    if kind == "none":
        return x
    if kind == "crop-flip":
        if span is None:
            return crop_flip(x, generator)
        start, stop, n = span
        return crop_flip_apply(x, crop_flip_draws(n, generator)[:, start:stop])
    raise SparseddError(f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
