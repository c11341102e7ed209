import math
import random

import numpy as np
import pytest
import torch

from sparsedd import config_load
from sparsedd.data.noise import ASYMMETRIC, apply_noise
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
        apply_noise(y, 10, 0.2, "bogus", 0)
    with pytest.raises(SparseddError):
        apply_noise(y, 10, 1.5, "random", 0)
    with pytest.raises(SparseddError):
        apply_noise(y, 5, 0.2, "random", 0)  # labels up to 9 with 5 classes


# ----------------------------------------------------------------------------- asymmetric and pairflip


def _transitions(clean: torch.Tensor, noisy: torch.Tensor, c: int) -> torch.Tensor:
    """counts[i, j]: examples of clean class i labelled j."""
    return torch.bincount(clean * c + noisy, minlength=c * c).view(c, c)


@pytest.mark.parametrize("n,rate", [(1000, 0.2), (4000, 0.4), (997, 0.3), (20, 1.0), (60, 0.5)])
def test_pairflip_moves_exactly_round_rate_n_to_the_next_class(n, rate):
    y = clean_labels(n)
    out = apply_noise(y, 10, rate, "pairflip", seed=4)
    k = round(rate * n)
    assert len(out.chosen) == len(out.corrupted) == k and torch.equal(out.chosen, out.corrupted)
    assert torch.equal(out.labels[out.chosen], (y[out.chosen] + 1) % 10)
    t = _transitions(y, out.labels, 10)
    off = t - torch.diag(torch.diag(t))
    for i in range(10):  # class i only ever goes to i + 1 (9 to 0)
        assert int(off[i].sum()) == int(off[i, (i + 1) % 10])
    assert out.effective_rate == k / n


def test_pairflip_with_two_classes_swaps():
    y = torch.tensor([0, 1] * 50)
    out = apply_noise(y, 2, 1.0, "pairflip", seed=0)
    assert torch.equal(out.labels, 1 - y)


CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
MNIST_MAP = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


@pytest.mark.parametrize("dataset,mapping", [("cifar10", CIFAR10_MAP), ("mnist", MNIST_MAP)])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 1.0])
def test_asymmetric_transitions_and_exact_counts(dataset, mapping, rate):
    assert ASYMMETRIC[dataset] == mapping
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (3001,), generator=g)  # unequal class sizes
    out = apply_noise(y, 10, rate, "asymmetric", seed=7, dataset=dataset)
    t = _transitions(y, out.labels, 10)
    expected = torch.diag(torch.bincount(y, minlength=10))
    for c, target in mapping.items():
        n_c = int((y == c).sum())
        k = round(rate * n_c)
        expected[c, c] -= k
        expected[c, target] += k
    assert torch.equal(t, expected)  # every flip is source -> target, round(rate * n_c) per source
    assert torch.equal(out.chosen, out.corrupted)
    assert out.effective_rate == len(out.corrupted) / len(y)


def test_asymmetric_cifar10_classes_named():
    # truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog; the rest untouched
    y = torch.arange(10).repeat_interleave(10)
    out = apply_noise(y, 10, 1.0, "asymmetric", seed=0, dataset="cifar10")
    assert out.labels.view(10, 10)[:, 0].tolist() == [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]


def test_asymmetric_cifar100_next_fine_class_in_superclass():
    # 4 superclasses of 3 fine classes each, interleaved so that fine labels are not contiguous
    coarse_of = torch.tensor([0, 1, 2, 3] * 3)  # fine f is in superclass f % 4
    y = torch.arange(12).repeat_interleave(10)
    out = apply_noise(y, 12, 1.0, "asymmetric", seed=0, coarse=coarse_of[y], dataset="cifar100")
    # superclass 0 = {0, 4, 8}: 0 -> 4 -> 8 -> 0; superclass 1 = {1, 5, 9}: 1 -> 5 -> 9 -> 1; ...
    expected = {f: (f + 4) % 12 for f in range(12)}
    assert out.labels.view(12, 10)[:, 0].tolist() == [expected[f] for f in range(12)]
    assert bool((out.labels.view(12, 10) == out.labels.view(12, 10)[:, :1]).all())
    part = apply_noise(y, 12, 0.3, "asymmetric", seed=1, coarse=coarse_of[y], dataset="cifar100")
    t = _transitions(y, part.labels, 12)
    for f in range(12):
        assert int(t[f, f]) == 7 and int(t[f, expected[f]]) == 3  # round(0.3 * 10) per class


def test_asymmetric_cifar100_singleton_superclass_is_left_alone():
    y = torch.tensor([0, 1, 2] * 5)
    coarse = torch.tensor([0, 0, 1] * 5)  # class 2 alone in superclass 1
    out = apply_noise(y, 100, 1.0, "asymmetric", seed=0, coarse=coarse, dataset="cifar100")
    assert out.labels.tolist() == [1, 0, 2] * 5


def test_asymmetric_seeding():
    y = clean_labels(2000)
    a = apply_noise(y, 10, 0.3, "asymmetric", seed=1, dataset="cifar10")
    b = apply_noise(y, 10, 0.3, "asymmetric", seed=1, dataset="cifar10")
    c = apply_noise(y, 10, 0.3, "asymmetric", seed=2, dataset="cifar10")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.chosen, b.chosen)
    assert not torch.equal(a.chosen, c.chosen) and len(a.chosen) == len(c.chosen)
    p1 = apply_noise(y, 10, 0.3, "pairflip", seed=1)
    assert torch.equal(p1.labels, apply_noise(y, 10, 0.3, "pairflip", seed=1).labels)
    assert not torch.equal(p1.labels, apply_noise(y, 10, 0.3, "pairflip", seed=2).labels)


@pytest.mark.parametrize("noise_type", ["asymmetric", "pairflip"])
def test_new_types_leave_input_and_global_rngs_alone(noise_type):
    y = clean_labels(1000)
    before = y.clone()
    states = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    out = apply_noise(y, 10, 0.3, noise_type, seed=0, dataset="mnist")
    assert torch.equal(y, before) and out.labels.dtype == torch.int64
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.random.get_rng_state(), states[2])


def test_asymmetric_bad_arguments():
    y = clean_labels(100)
    for dataset in (None, "mnist1d", "tinyimagenet"):
        with pytest.raises(SparseddError, match="asymmetric label noise is defined for") as e:
            apply_noise(y, 10, 0.2, "asymmetric", 0, dataset=dataset)
        assert "\n" not in str(e.value)
    with pytest.raises(SparseddError, match="coarse"):
        apply_noise(y, 10, 0.2, "asymmetric", 0, dataset="cifar100")
    with pytest.raises(SparseddError, match="shape"):
        apply_noise(y, 10, 0.2, "asymmetric", 0, dataset="cifar100", coarse=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(SparseddError, match="superclasses"):
        bad = torch.arange(100) % 3  # class 0 under superclasses 0, 1 and 2
        apply_noise(y, 10, 0.2, "asymmetric", 0, dataset="cifar100", coarse=bad)
    with pytest.raises(SparseddError):
        apply_noise(torch.arange(100) % 5, 5, 0.2, "asymmetric", 0, dataset="cifar10")  # 5 classes only


def test_per_example_draws_flip_each_example_with_the_rate():
    """data.noise_draw = per-example (the paper's code): independent flips, a binomial count, not exactly round(rate N)."""
    y = clean_labels(20000)
    for noise_type in ("symmetric", "pairflip"):
        counts = {len(apply_noise(y, 10, 0.3, noise_type, seed=s, draw="per-example").corrupted) for s in range(4)}
        assert len(counts) > 1  # the count varies with the seed
        assert all(abs(c - 6000) < 4 * (20000 * 0.3 * 0.7) ** 0.5 for c in counts)
    exact = apply_noise(y, 10, 0.3, "symmetric", seed=0)
    assert len(exact.corrupted) == 6000


def test_paper_asymmetric_maps():
    """data.asymmetric_map = paper: MNIST 2->7, 3->8, 5<->6 (7 stays), CIFAR-100 in blocks of 5 classes."""
    y = torch.arange(10).repeat(500)
    out = apply_noise(y, 10, 0.4, "asymmetric", seed=0, dataset="mnist", asymmetric_map="paper", draw="per-example")
    t = _transitions(y, out.labels, 10)
    moved = {(a, b) for a in range(10) for b in range(10) if a != b and t[a, b] > 0}
    assert moved == {(2, 7), (3, 8), (5, 6), (6, 5)}
    assert (y[out.corrupted] == 7).sum() == 0
    y100 = torch.arange(100).repeat(50)
    coarse = torch.randint(0, 20, (100,), generator=torch.Generator().manual_seed(0))[y100]  # not the blocks
    out = apply_noise(y100, 100, 0.5, "asymmetric", seed=0, dataset="cifar100", coarse=coarse, asymmetric_map="paper")
    src, dst = y100[out.corrupted], out.labels[out.corrupted]
    assert torch.equal(dst, (src // 5) * 5 + (src % 5 + 1) % 5)
    assert len(out.corrupted) == 100 * 25  # exact counts unless per-example


def test_noise_draw_and_map_enter_ids_only_where_they_change_labels():

    def run_id(*sets):
        return config_load.load("mnist1d-quick", sets=list(sets)).run_id

    assert run_id("data.noise_draw=per-example", "data.asymmetric_map=paper") == run_id()  # random noise
    asym = ("data.name=mnist", "data.noise_type=asymmetric")  # (a data set asymmetric noise is defined for)
    assert run_id(*asym, "data.asymmetric_map=paper") != run_id(*asym)
    assert run_id(*asym, "data.noise_draw=per-example") != run_id(*asym)
    assert run_id("data.noise_type=symmetric", "data.asymmetric_map=paper") == run_id("data.noise_type=symmetric")
    assert config_load.load("paper-mnist-lenet").data.noise_draw == "per-example"  # the paper presets name both
