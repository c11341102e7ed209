import math
import random

import numpy as np
import pytest
import torch

from sparsedd.data.noise import apply_noise
from sparsedd.errors import SparseddError


def clean_labels(n: int = 1000, c: int = 10) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64) % c


@pytest.mark.parametrize("n,rate", [(1000, 0.2), (4000, 0.2), (60000, 0.2), (999, 0.1), (7, 0.5), (5, 1.0), (3, 0.34)])
def test_random_chooses_ceil_rate_n(n, rate):
    y = clean_labels(n)
    out = apply_noise(y, 10, rate, "random", seed=0)
    assert len(out.chosen) == math.ceil(round(rate * n, 9))
    assert len(set(out.chosen.tolist())) == len(out.chosen)  # without replacement
    assert out.chosen.tolist() == sorted(out.chosen.tolist())
    assert set(out.corrupted.tolist()) <= set(out.chosen.tolist())
    assert torch.equal(out.corrupted, torch.nonzero(out.labels != y).flatten())
    assert out.effective_rate == len(out.corrupted) / n
    unchosen = torch.ones(n, dtype=torch.bool)
    unchosen[out.chosen] = False
    assert torch.equal(out.labels[unchosen], y[unchosen])


def test_float_error_does_not_add_an_example():
    # 0.07 * 100 = 7.000000000000001 in floating point: must still choose 7, not 8
    assert 0.07 * 100 > 7
    assert len(apply_noise(clean_labels(100), 10, 0.07, "random", 0).chosen) == 7


@pytest.mark.parametrize("n,rate", [(1000, 0.2), (4000, 0.2), (999, 0.1), (7, 0.5), (5, 1.0)])
def test_symmetric_changes_exactly_round_rate_n(n, rate):
    y = clean_labels(n)
    out = apply_noise(y, 10, rate, "symmetric", seed=3)
    k = round(rate * n)
    assert len(out.corrupted) == len(out.chosen) == k
    assert torch.equal(out.chosen, out.corrupted)
    assert bool((out.labels[out.corrupted] != y[out.corrupted]).all())
    assert out.effective_rate == k / n
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) < 10


def test_symmetric_new_labels_cover_the_other_classes():
    y = torch.zeros(20000, dtype=torch.int64)
    out = apply_noise(y, 10, 0.5, "symmetric", seed=0)
    counts = torch.bincount(out.labels[out.corrupted], minlength=10)
    assert counts[0] == 0
    assert all(abs(int(c) - 10000 / 9) < 200 for c in counts[1:])


@pytest.mark.parametrize("noise_type", ["random", "symmetric"])
def test_seeding(noise_type):
    y = clean_labels(2000)
    a = apply_noise(y, 10, 0.2, noise_type, seed=1)
    b = apply_noise(y, 10, 0.2, noise_type, seed=1)
    c = apply_noise(y, 10, 0.2, noise_type, seed=2)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.chosen, b.chosen)
    assert not torch.equal(a.labels, c.labels)


@pytest.mark.parametrize("noise_type", ["random", "symmetric"])
def test_rate_zero_changes_nothing(noise_type):
    y = clean_labels(500)
    out = apply_noise(y, 10, 0.0, noise_type, seed=0)
    assert torch.equal(out.labels, y)
    assert out.chosen.numel() == 0 and out.corrupted.numel() == 0
    assert out.chosen.dtype == out.corrupted.dtype == torch.int64
    assert out.effective_rate == 0.0


@pytest.mark.parametrize("noise_type", ["random", "symmetric"])
def test_input_is_not_modified_and_global_rngs_untouched(noise_type):
    y = clean_labels(1000)
    before = y.clone()
    states = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    out = apply_noise(y, 10, 0.3, noise_type, seed=0)
    assert torch.equal(y, before)
    assert out.labels.data_ptr() != y.data_ptr()
    assert out.labels.dtype == torch.int64 and out.labels.shape == y.shape
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.random.get_rng_state(), states[2])


def test_random_effective_rate_is_rate_times_one_minus_one_over_c():
    n, c, rate = 100_000, 10, 0.4
    out = apply_noise(clean_labels(n, c), c, rate, "random", seed=0)
    assert len(out.chosen) == 40_000
    assert out.effective_rate == pytest.approx(rate * (1 - 1 / c), abs=0.005)


def test_bad_arguments():
    y = clean_labels(10)
    with pytest.raises(SparseddError, match="unknown noise type"):
        apply_noise(y, 10, 0.2, "pairflip", 0)
    with pytest.raises(SparseddError):
        apply_noise(y, 10, 1.5, "random", 0)
    with pytest.raises(SparseddError):
        apply_noise(y, 5, 0.2, "random", 0)  # labels up to 9 with 5 classes
