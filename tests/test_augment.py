import pytest
import torch
import torch.nn.functional as F

from sparsedd.data.augment import AUGMENTATIONS, augment_batch, crop_flip
from sparsedd.errors import SparseddError
from sparsedd.rng import generator


def coordinate_images(b: int = 64, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    """Pixel (k, ch, i, j) = 1 + i * 100 + j + 1000 * ch + 10000 * k: every pixel is distinct and nonzero."""
    k = torch.arange(b).view(b, 1, 1, 1)
    ch = torch.arange(c).view(1, c, 1, 1)
    i = torch.arange(h).view(1, 1, h, 1)
    j = torch.arange(w).view(1, 1, 1, w)
    return (1 + i * 100 + j + 1000 * ch + 10000 * k).float()


def explain(out: torch.Tensor, x: torch.Tensor, p: int) -> list[tuple[int, int, bool]]:
    """For each output image, the (row offset, column offset, flipped) that produced it."""
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    found = []
    for k in range(len(x)):
        hits = [
            (dy, dx, flip)
            for dy in range(2 * p + 1) for dx in range(2 * p + 1) for flip in (False, True)
            if torch.equal(out[k], (lambda v: v.flip(-1) if flip else v)(padded[k, :, dy:dy + h, dx:dx + w]))
        ]
        assert len(hits) == 1, f"image {k} is not a single shifted / flipped window"
        found.append(hits[0])
    return found


def test_each_output_is_a_shifted_and_maybe_flipped_window():
    x = coordinate_images()
    out = crop_flip(x, torch.Generator().manual_seed(0), padding=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    how = explain(out, x, 4)
    flips = [f for _, _, f in how]
    assert 10 < sum(flips) < 54  # both happen, about half each
    assert len({(dy, dx) for dy, dx, _ in how}) > 20  # many of the 81 offsets
    assert {dy for dy, _, _ in how} | {dx for _, dx, _ in how} <= set(range(9))


def test_offsets_cover_the_range_uniformly():
    x = coordinate_images(b=2000, c=1, h=4, w=4)
    out = crop_flip(x, torch.Generator().manual_seed(1), padding=2)
    how = explain(out[:300], x[:300], 2)
    assert {dy for dy, _, _ in how} == set(range(5)) and {dx for _, dx, _ in how} == set(range(5))
    # unflipped centre crops reproduce the image: about 1 / (5 * 5 * 2) of them
    same = (out == x).flatten(1).all(1).float().mean().item()
    assert abs(same - 1 / 50) < 0.01


def test_padding_region_is_zero():
    x = torch.full((256, 3, 6, 6), 5.0)
    out = crop_flip(x, torch.Generator().manual_seed(2), padding=3)
    assert set(out.unique().tolist()) == {0.0, 5.0}
    assert (out == 0).any(dim=(1, 2, 3)).float().mean() > 0.5
    # zeros come in whole rows / columns at the border, the same in every channel
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    for img in out[:, 0]:
        rows = (img == 5).any(1).nonzero().flatten()
        cols = (img == 5).any(0).nonzero().flatten()
        assert rows.numel() >= 3 and cols.numel() >= 3
        assert bool((img[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 5).all())
        assert int((img == 5).sum()) == rows.numel() * cols.numel()


def test_deterministic_per_seed_and_seeds_differ():
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = crop_flip(x, torch.Generator().manual_seed(5))
    b = crop_flip(x, torch.Generator().manual_seed(5))
    c = crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(5)
    first, second = crop_flip(x, g), crop_flip(x, g)  # the generator advances
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_input_untouched_and_padding_zero_only_flips():
    x = coordinate_images(b=40)
    before = x.clone()
    out = crop_flip(x, torch.Generator().manual_seed(3), padding=0)
    assert torch.equal(x, before)
    for k in range(40):
        assert torch.equal(out[k], x[k]) or torch.equal(out[k], x[k].flip(-1))
    assert not torch.equal(out, x) and not torch.equal(out, x.flip(-1))


def test_non_square_images_and_bad_arguments():
    x = coordinate_images(b=5, c=2, h=7, w=12)
    explain(crop_flip(x, torch.Generator().manual_seed(0), padding=1), x, 1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        crop_flip(torch.zeros(3, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="padding"):
        crop_flip(torch.zeros(1, 3, 8, 8), torch.Generator(), padding=-1)


def test_augment_batch_dispatch():
    x = torch.randn(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert augment_batch("none", x, g) is x
    assert torch.equal(g.get_state(), state)  # no draw for "none"
    assert torch.equal(augment_batch("crop-flip", x, g), crop_flip(x, torch.Generator().manual_seed(0)))
    assert AUGMENTATIONS == ("none", "crop-flip")
    with pytest.raises(SparseddError, match="unknown augmentation 'cutout'"):
        augment_batch("cutout", x, g)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_result_on_cuda():
    x = torch.randn(16, 3, 32, 32)
    cpu = crop_flip(x, torch.Generator().manual_seed(9))
    gpu = crop_flip(x.cuda(), torch.Generator().manual_seed(9))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_data_parallel_parts_get_the_draws_their_images_have_in_the_whole_batch():
    """Each process augments its part of a global batch as one process augments the whole batch (found by
    review: every process drew the same crops and flips for its own first images)."""
    from sparsedd.distributed import Dist

    x = torch.randn(11, 3, 8, 8)
    whole = augment_batch("crop-flip", x, generator("aug-test"))
    for world in (2, 3, 4):
        parts = []
        for rank in range(world):
            d = Dist(rank, world)
            start, stop = d.local_span(x.shape[0])
            assert torch.equal(d.local_slice(torch.arange(11)), torch.tensor_split(torch.arange(11), world)[rank])
            parts.append(augment_batch("crop-flip", x[start:stop], generator("aug-test"), (start, stop, 11)))
        assert torch.equal(torch.cat(parts), whole)
        start, stop = Dist(1, world).local_span(11)  # not the draws of a batch of its part alone (as before)
        assert not torch.equal(parts[1], augment_batch("crop-flip", x[start:stop], generator("aug-test")))
