"""Sparse execution (live units only, CSR kernels) equals the dense-masked computation."""

import pytest
import torch
import torch.nn.functional as F

from sparsedd import config_load
from sparsedd.errors import SparseddError
from sparsedd.models.mlp import MLP
from sparsedd.pruning import full_mask, magnitude, random
from sparsedd.store import FileCheckpointer
from sparsedd.training import TrainData, train
from sparsedd.training.sparse import CompactMLP, SparsePolicy, crossover_for, crossovers, measure_crossover
from test_training import _DyingCheckpointer, _Interrupt

WIDTHS = (30, 24, 16, 5)


@pytest.fixture(autouse=True)
def _csr_on_small_blocks(monkeypatch):
    """The test networks are tiny: their blocks take the CSR kernels wherever a test asks for them."""
    import sparsedd.training.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "CSR_MIN_AREA", 0)


def net(seed=0, widths=WIDTHS):
    torch.manual_seed(seed)
    return MLP(widths[0], widths[1:-1], widths[-1])


def structured_mask(model, density, scope="layer", layers="default"):
    """A magnitude mask with every kind of unit: dropped inputs, dead and constant hidden units."""
    w = {n: p.detach() for n, p in model.named_parameters()}
    mask = full_mask(model, model.prunable_names(layers))
    if density < 1:
        mask = magnitude(w, mask, fraction=1 - density, scope=scope)
    mask = {k: v.clone() for k, v in mask.items()}
    mask["layers.0.weight"][:3] = False  # hidden units 0-2 of layer 1 get no input: constant
    mask["layers.1.weight"][:2, 3:] = False  # units 0-1 of layer 2 read only constant units: constant too
    mask["layers.1.weight"][:, 5:8] = False  # hidden units 5-7 of layer 1 feed nothing: dead
    mask["layers.0.weight"][:, :4] = False  # inputs 0-3 are read by no one: dropped
    return mask


def masked_copy(model, mask):
    ref = MLP(WIDTHS[0], WIDTHS[1:-1], WIDTHS[-1])
    ref.load_state_dict({k: v * mask[k] if k in mask else v for k, v in model.state_dict().items()})
    return ref


@pytest.mark.parametrize("kernel", [0.0, 1.01])
@pytest.mark.parametrize("density,scope", [(1.0, "layer"), (0.4, "global"), (0.1, "layer"), (0.03, "global")])
def test_forward_and_backward_equal_the_dense_masked_network(kernel, density, scope):
    model = net()
    mask = structured_mask(model, density, scope)
    compact = CompactMLP(model.state_dict(), mask, kernel_below=kernel)
    assert compact.dead_units[0] >= 4 and compact.dead_units[1] >= 3 and compact.const_units[1] >= 3
    assert compact.const_units[2] >= 2 or density < 0.1  # a unit fed by constants only is constant as well
    for ix, k in zip(compact.index, compact.kernels):
        assert k == ("csr" if kernel > 1 and ix["main"].nnz else "dense")
    ref = masked_copy(model, mask)
    x, y = torch.randn(17, WIDTHS[0]), torch.randint(0, WIDTHS[-1], (17,))
    out_ref, out = ref(x), compact(x)
    assert torch.allclose(out, out_ref, atol=1e-6), (out - out_ref).abs().max()
    F.cross_entropy(out_ref, y).backward()
    F.cross_entropy(out, y).backward()
    for i in range(compact.depth):
        gw, gb = compact._to_full(i, compact.flat.grad)
        want = ref.layers[i].weight.grad * mask.get(f"layers.{i}.weight", 1)
        assert torch.allclose(gw, want, atol=1e-6), (i, (gw - want).abs().max())
        assert torch.allclose(gb, ref.layers[i].bias.grad, atol=1e-6), i
    # weights round-trip exactly, masked entries are zero
    for k, v in compact.dense_state().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_a_fully_pruned_layer_leaves_only_biases():
    model = net()
    mask = full_mask(model, model.prunable_names("all"))
    mask = {k: torch.zeros_like(v) for k, v in mask.items()}
    compact = CompactMLP(model.state_dict(), mask, kernel_below=1.01)
    x = torch.randn(4, WIDTHS[0])
    assert torch.allclose(compact(x), masked_copy(model, mask)(x), atol=1e-6)
    assert compact.live_units[0] == 0


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, WIDTHS[0], generator=g)
    y = torch.randint(0, WIDTHS[-1], (n,), generator=g)
    return TrainData(x, y, y.clone(), x[:40], y[:40], torch.arange(0))


CFGS = [
    dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3, schedule="cosine"),
    dict(optimizer="sgd", lr=0.1),
    dict(optimizer="adam", lr=0.01, weight_decay=1e-3),
]


@pytest.mark.parametrize("kw", CFGS)
@pytest.mark.parametrize("kernel", [0.0, 1.01])
def test_training_on_live_units_follows_the_dense_masked_trajectory(kw, kernel):
    from sparsedd.config import TrainConfig

    cfg = TrainConfig(epochs=3, batch_size=32, eval_every=1, **kw)
    d = data()
    runs = []
    for policy in (None, SparsePolicy("on", kernel_below=kernel)):
        model = net()
        mask = structured_mask(model, 0.2)
        warm = train(model, d, cfg, mask, order_key=(0, "warm"))  # an optimizer state to carry, as finetuning does
        res = train(model, d, cfg, mask, order_key=(0, "order"), optimizer_state=warm.optimizer_state, sparse=policy)
        runs.append((model.state_dict(), res))
    (ref_state, ref), (state, res) = runs
    for k in ref_state:
        assert torch.allclose(state[k], ref_state[k], atol=1e-5), (k, (state[k] - ref_state[k]).abs().max())
    for a, b in zip(ref.history, res.history):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a if a[k] is not None), (a, b)
    # the optimizer state comes back in the model's layout; masked weights' entries are irrelevant
    mask = structured_mask(net(), 0.2)
    for idx, entry in ref.optimizer_state["state"].items():
        for name, v in entry.items():
            if torch.is_tensor(v) and v.dim() > 0:
                got = res.optimizer_state["state"][idx][name]
                keep = mask.get(f"layers.{idx // 2}.weight", torch.ones_like(v, dtype=torch.bool)) if idx % 2 == 0 \
                    else torch.ones_like(v, dtype=torch.bool)
                assert torch.allclose(got[keep], v[keep], atol=1e-5), (idx, name)


@pytest.mark.parametrize("saves", [1, 5])
def test_compact_training_resumes_bit_exactly(tmp_path, saves):
    from sparsedd.config import TrainConfig

    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, epochs=3, batch_size=50)
    policy = SparsePolicy("on", kernel_below=1.01)
    ref = net()
    mask = structured_mask(ref, 0.2)
    ref_res = train(ref, data(), cfg, mask, order_key=(0, "order"), sparse=policy)
    model = net()
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt):
        train(model, data(), cfg, mask, order_key=(0, "order"), checkpoint=_DyingCheckpointer(path, saves),
              sparse=policy)
    resumed = net(seed=5)  # the checkpoint, not these weights, decides
    # resumed under another policy: the checkpoint's layout wins
    res = train(resumed, data(), cfg, mask, order_key=(0, "order"), checkpoint=FileCheckpointer(path, 1e9, 1e9),
                sparse=SparsePolicy("off"))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert res.history == ref_res.history


def test_crossover_rule():
    rows = [{"density": d, "dense_masked_s": 1.0, "compact_dense_s": c, "compact_csr_s": s}
            for d, c, s in [(1.0, 1.1, 3.0), (0.5, 1.05, 1.2), (0.2, 1.0, 0.7), (0.1, 0.95, 0.95), (0.05, 0.9, 0.5)]]
    got = crossovers(rows)
    # CSR wins below 0.05 only (at 0.1 it ties), compact (with CSR where it wins) by 10% from 0.05 down
    assert got["kernel_below"] == pytest.approx(0.05, rel=1e-3) and got["crossover"] == 0.05
    rows[3]["compact_csr_s"] = 0.6
    got = crossovers(rows)
    assert got["kernel_below"] == pytest.approx(0.2, rel=1e-3) and got["crossover"] == 0.2


def test_measured_crossover_is_cached(tmp_path):
    cache = tmp_path / "crossover.json"
    first = crossover_for((8, 6, 3), 16, torch.device("cpu"), str(cache))
    assert 0.0 <= first["crossover"] <= 1.0 and len(first["points"]) == 13 and cache.exists()
    assert crossover_for((8, 6, 3), 16, torch.device("cpu"), str(cache)) == first
    small = measure_crossover((8, 6, 3), 16, steps=1)
    assert {"dense_masked_s", "compact_dense_s", "compact_csr_s"} <= set(small["points"][0])


def test_a_cache_shared_by_two_kinds_of_processor_keeps_each_ones_measurement(tmp_path, monkeypatch):
    import sparsedd.training.measured as measured
    import sparsedd.training.sparse as sparse_mod

    calls = []

    def fake_measure(*args, **kwargs):
        calls.append(measured.cpu_name())
        return {"crossover": 0.1 * len(calls), "kernel_below": 0.0, "points": []}

    monkeypatch.setattr(sparse_mod, "measure_crossover", fake_measure)
    cache, cpu = str(tmp_path / "crossover.json"), torch.device("cpu")
    monkeypatch.setattr(measured, "cpu_name", lambda: "Fast CPU")
    fast = crossover_for((8, 6, 3), 16, cpu, cache)
    monkeypatch.setattr(measured, "cpu_name", lambda: "Slow CPU")
    slow = crossover_for((8, 6, 3), 16, cpu, cache)
    monkeypatch.setattr(measured, "cpu_name", lambda: "Fast CPU")
    assert crossover_for((8, 6, 3), 16, cpu, cache) == fast != slow
    assert calls == ["Fast CPU", "Slow CPU"]


def test_policy(tmp_path):
    model = net()
    mask = structured_mask(model, 0.2)
    assert SparsePolicy("off").decide(model, mask, 32, "fp32") is None
    assert SparsePolicy("on").decide(model, mask, 32, "bf16") is None  # compact runs fp32 only
    assert SparsePolicy("auto", crossover=0.5, kernel_below=0.1).decide(model, mask, 32, "fp32") == 0.1
    assert SparsePolicy("auto", crossover=0.01, kernel_below=0.1).decide(model, mask, 32, "fp32") is None
    dead = {k: torch.zeros_like(v) for k, v in mask.items()}  # nothing live: compact wherever it ever wins
    assert SparsePolicy("auto", crossover=0.01, kernel_below=0.1).decide(model, dead, 32, "fp32") == 0.1
    assert SparsePolicy("auto", crossover=0.0, kernel_below=0.1).decide(model, dead, 32, "fp32") is None
    with pytest.raises(SparseddError, match="unknown sparse mode"):
        SparsePolicy("fast")
    off_cpu = net().to("meta")  # any device but the CPU: auto keeps dense-masked without measuring
    assert SparsePolicy("auto", cache_dir=str(tmp_path)).decide(off_cpu, structured_mask(model, 0.01), 32, "fp32") is None
    assert not any(tmp_path.iterdir())
    assert SparsePolicy("auto", crossover=0.5, kernel_below=0.1).decide(off_cpu, mask, 32, "fp32") == 0.1
    w = {n: p.detach() for n, p in model.named_parameters()}
    bias_mask = random(w, {"layers.0.bias": torch.ones(24, dtype=torch.bool)}, fraction=0.5, scope="layer",
                       generator=torch.Generator().manual_seed(0))
    assert SparsePolicy("on").decide(model, bias_mask, 32, "fp32") is None


@pytest.mark.parametrize("mode", ["weight-rewind", "finetune", "lr-rewind", "reinit"])
def test_pipeline_compact_levels_equal_dense_masked(tmp_path, tiny_sets, mode):
    from sparsedd.experiments import ExecOptions, run
    from sparsedd.store import Store

    cfg = config_load.load(sets=[*tiny_sets, f"retrain.mode={mode}", "prune.fraction=0.6", "train.momentum=0.9"])
    curves = []
    for sparse in ("off", "on"):
        store = Store(tmp_path / sparse)
        rid = run(cfg, store, options=ExecOptions(progress=False, sparse=sparse))
        curves.append([store.final(sid) for sid in store.index.run_stages(rid).values()])
    for level, (a, b) in enumerate(zip(*curves)):
        for k in a["model"]:
            assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4), (level, k)
        assert all(torch.equal(a["mask"][k], b["mask"][k]) for k in a["mask"]), level


@pytest.mark.parametrize("flags, seeds, want", [
    (["--sparse", "off", "--batch", "off"], 1, {"dense-masked"}),
    (["--sparse", "on", "--batch", "off"], 1, {"compact"}),
    (["--sparse", "off", "--batch", "on"], 2, {"stacked"}),
])
def test_each_stage_records_what_computed_it(tmp_path, tiny_sets, capsys, flags, seeds, want):
    """The measured decisions differ between machines: every stage says which execution produced it, and the
    run says once per seed when it is not the plain dense-masked one, and why."""
    import json

    from sparsedd.cli import main

    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", "--seeds", str(seeds), *flags,
                 *[a for s in tiny_sets for a in ("--set", s)]]) == 0
    got = {json.loads(p.read_text())["metrics"]["execution"] for p in (root / "stages").glob("*/done.json")
           if "metrics" in json.loads(p.read_text())}
    assert got == want
    err = capsys.readouterr().err
    if want == {"dense-masked"}:
        assert "execution" not in err
    else:
        kind = next(iter(want))
        assert err.count(f"level 0: {kind} execution (--") == seeds


def test_loss_and_grad_without_autograd_equals_autograd():
    """The trainer's compact step skips autograd; its loss and gradient are autograd's (to rounding)."""
    model = net()
    mask = structured_mask(model, 0.1)
    for kernel in (0.0, 1.01):
        compact = CompactMLP(model.state_dict(), mask, kernel_below=kernel)
        x, y = torch.randn(23, WIDTHS[0]), torch.randint(0, WIDTHS[-1], (23,))
        ref_loss = F.cross_entropy(compact(x), y)
        ref_loss.backward()
        want = compact.flat.grad.clone()
        compact.flat.grad = None
        loss, out = compact.loss_and_grad(x, y)
        assert torch.allclose(loss, ref_loss, atol=1e-6) and torch.allclose(out, compact(x), atol=1e-6)
        assert torch.allclose(compact.flat.grad, want, atol=1e-6), (compact.flat.grad - want).abs().max()
        # the same from the inputs selected once (what a training stage does)
        compact.flat.grad = None
        loss2, _ = compact.loss_and_grad(compact.live_inputs(x), y, selected=True)
        assert torch.equal(loss2, loss) and torch.allclose(compact.flat.grad, want, atol=1e-6)
        # masked positions inside stored blocks never move off zero
        if compact.grad_mask is not None:
            assert not compact.flat.grad[compact.grad_mask == 0].any()
            assert not compact.flat.detach()[compact.grad_mask == 0].any()


def test_compact_steps_run_on_one_thread_and_give_the_threads_back():
    """Under load, 2 threads made a compact step 4x slower (docs/performance.md): its steps run on one."""
    from sparsedd.config import TrainConfig

    cfg = TrainConfig(lr=0.05, epochs=1, batch_size=40)
    model = net()
    mask = structured_mask(model, 0.2)
    seen = []
    torch.set_num_threads(2)
    try:
        train(model, data(), cfg, mask, order_key=(0, "order"), sparse=SparsePolicy("on", kernel_below=0.0),
              on_step=lambda _: seen.append(torch.get_num_threads()))
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
        seen.clear()
        train(net(), data(), cfg, mask, order_key=(0, "order"), sparse=SparsePolicy("off"),
              on_step=lambda _: seen.append(torch.get_num_threads()))
        assert seen == [2, 2, 2]  # dense-masked training keeps the process's threads
    finally:
        torch.set_num_threads(1)


def test_a_checkpoint_in_an_older_compact_layout_starts_the_stage_over(tmp_path, capsys):
    from sparsedd.config import TrainConfig

    cfg = TrainConfig(lr=0.05, momentum=0.9, epochs=3, batch_size=50)
    policy = SparsePolicy("on", kernel_below=0.0)
    mask = structured_mask(net(), 0.2)
    ref = net()
    ref_res = train(ref, data(), cfg, mask, order_key=(0, "order"), sparse=policy)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(_Interrupt):
        train(net(), data(), cfg, mask, order_key=(0, "order"), checkpoint=_DyingCheckpointer(path, 1), sparse=policy)
    # what sparsedd 0.x wrote: a compact checkpoint without a layout (its flat vector held values only)
    from sparsedd.store.files import load_tensors, save_tensors

    state = load_tensors(path)
    state.pop("compact_layout")
    state["model"] = {"flat": torch.zeros(7)}
    save_tensors(path, state)
    model = net()
    res = train(model, data(), cfg, mask, order_key=(0, "order"), checkpoint=FileCheckpointer(path, 1e9, 1e9),
                sparse=policy)
    assert "older sparsedd's layout; the stage starts again from its beginning" in capsys.readouterr().err
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert res.history == ref_res.history


def test_measured_decisions_time_their_candidates_in_turns():
    """A load that comes and goes while a decision is measured hits every candidate (issue 23)."""
    from sparsedd.training.measured import interleaved_medians

    calls, clock = [], iter([5.0, 1.0, 2.0, 9.0, 3.0, 1.5])

    def timer(name):
        def t():
            calls.append(name)
            return next(clock)
        return t

    got = interleaved_medians({"a": timer("a"), "b": timer("b")}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert got == {"a": 3.0, "b": 1.5}  # medians of (5, 2, 3) and (1, 9, 1.5): the 9 was a passing load


def test_small_blocks_are_multiplied_dense_whatever_their_density(monkeypatch):
    import sparsedd.training.sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "CSR_MIN_AREA", 24 * 26)
    model = net()
    mask = structured_mask(model, 1.0)
    compact = CompactMLP(model.state_dict(), mask, kernel_below=1.01)
    areas = [ix["main"].shape[0] * ix["main"].shape[1] for ix in compact.index]
    assert compact.kernels == ["csr" if a >= 24 * 26 else "dense" for a in areas] and "dense" in compact.kernels
