"""The iterative pruning loop: where each retraining mode starts, stage sharing, reproducibility."""


import pytest
import torch

import sparsedd.experiments.replicate as imp  # where a stage's training is called
from sparsedd import config_load
from sparsedd.experiments import ExecOptions, run
from sparsedd.models import build_model
from sparsedd.rng import derive_seed
from sparsedd.store import Store
from sparsedd.training import TrainData, train
from sparsedd.data import load_dataset
from sparsedd.data.noise import apply_noise


@pytest.fixture
def spy(monkeypatch):
    """Record the weights (already masked), mask and schedule every training call starts from."""
    calls = []
    real = imp.train

    def wrapped(model, data, cfg, mask, **kw):
        if kw.get("stop_iteration") is None:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for n, m in mask.items():
                state[n] *= m
            calls.append({"start": state, "mask": {k: v.clone() for k, v in mask.items()}, "cfg": cfg})
        return real(model, data, cfg, mask, **kw)

    monkeypatch.setattr(imp, "train", wrapped)
    return calls


def finals(store, run_id):
    return [store.final(sid) for sid in store.index.run_stages(run_id).values()]


def do_run(tmp_path, sets, mode, extra=()):
    cfg = config_load.load(sets=[*sets, f"retrain.mode={mode}", *extra])
    store = Store(tmp_path / "runs")
    rid = run(cfg, store, options=ExecOptions(progress=False))
    return cfg, store, rid


def masked(state, mask):
    out = {k: v.clone() for k, v in state.items()}
    for n, m in mask.items():
        out[n] *= m
    return out


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_weight_rewind_starts_from_masked_init(tmp_path, tiny_sets, spy):
    cfg, store, rid = do_run(tmp_path, tiny_sets, "weight-rewind")
    f = finals(store, rid)
    dense_id = store.stage_id(imp.dense_key(cfg))
    init = store.init(dense_id)
    assert len(spy) == 3  # dense + 2 levels
    for level in (1, 2):
        call = spy[level]
        assert same(call["mask"], f[level]["mask"])
        assert same(call["start"], masked(init, call["mask"]))
        assert call["cfg"] == cfg.train


def test_weight_rewind_to_a_later_iteration(tmp_path, tiny_sets, spy):
    cfg, store, rid = do_run(tmp_path, tiny_sets, "weight-rewind", ["retrain.rewind_iteration=5"])
    dense_id = store.stage_id(imp.dense_key(cfg))
    # the rewind point is the dense run's weights after 5 iterations: recompute it independently
    data = load_dataset(cfg.data)
    noisy = apply_noise(data.y_train, 10, cfg.data.noise, cfg.data.noise_type, cfg.data.noise_seed)
    td = TrainData(data.x_train, noisy.labels, data.y_train, data.x_test, data.y_test, noisy.corrupted)
    model = build_model(cfg.model, (40,), 10, derive_seed(cfg.seed, "init"))
    assert same(model.state_dict(), store.init(dense_id))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in model.prunable_names()}
    train(model, td, cfg.train, mask, order_key=(cfg.seed, "order"), stop_iteration=5)
    for level in (1, 2):
        assert same(spy[level]["start"], masked(model.state_dict(), spy[level]["mask"]))


@pytest.mark.parametrize("mode", ["finetune", "lr-rewind"])
def test_finetune_and_lr_rewind_start_from_previous_final(tmp_path, tiny_sets, spy, mode):
    cfg, store, rid = do_run(tmp_path, tiny_sets, mode, ["retrain.finetune_lr=0.003", "retrain.finetune_epochs=2"])
    f = finals(store, rid)
    for level in (1, 2):
        call = spy[level]
        assert same(call["start"], masked(f[level - 1]["model"], call["mask"]))
    if mode == "finetune":
        assert spy[1]["cfg"].lr == 0.003 and spy[1]["cfg"].epochs == 2 and spy[1]["cfg"].schedule == "constant"
    else:
        assert spy[1]["cfg"] == cfg.train


def test_reinit_same_mask_new_weights(tmp_path, tiny_sets, spy):
    cfg, store, rid = do_run(tmp_path / "a", tiny_sets, "reinit")
    init = store.init(store.stage_id(imp.dense_key(cfg)))
    _, store_w, rid_w = do_run(tmp_path / "w", tiny_sets, "weight-rewind")
    level1_w = finals(store_w, rid_w)[1]
    # level 1 prunes the same dense network, so reinit and the ticket share the mask
    assert same(spy[1]["mask"], level1_w["mask"])
    w = "layers.0.weight"
    assert not torch.equal(spy[1]["start"][w], masked(init, spy[1]["mask"])[w])
    assert not torch.equal(spy[1]["start"][w], spy[2]["start"][w])  # a new draw per level
    assert torch.all(spy[1]["start"][w][~spy[1]["mask"][w]] == 0)
    # and the draw is reproducible
    _, store_b, rid_b = do_run(tmp_path / "b", tiny_sets, "reinit")
    assert same(finals(store_b, rid_b)[2]["model"], finals(store, rid)[2]["model"])


def test_dense_stage_is_shared_and_finished_stages_skipped(tmp_path, tiny_sets, spy):
    do_run(tmp_path, tiny_sets, "weight-rewind")
    assert len(spy) == 3
    do_run(tmp_path, tiny_sets, "finetune")  # same root: the dense network is reused
    assert len(spy) == 5
    do_run(tmp_path, tiny_sets, "finetune")  # everything done: nothing trains
    assert len(spy) == 5
    cfg, store, rid = do_run(tmp_path, tiny_sets, "finetune", ["prune.levels=3"])  # one more level only
    assert len(spy) == 6
    kinds = [sid for run_id in store.index.run_ids() for sid in store.index.run_stages(run_id).values()]
    # dense linked by all three runs, finetune levels 1 and 2 by two: 4 links to stages stored once
    assert len(kinds) == len(set(kinds)) + 4 and len(set(kinds)) == 6


def test_level_metrics_and_sparsity(tmp_path, tiny_sets):
    from sparsedd.results import load

    cfg, store, rid = do_run(tmp_path, tiny_sets, "weight-rewind", ["seeds=2", "prune.levels=3"])
    lv = load(store.root).levels
    assert sorted(lv["seed"].unique()) == [0, 1] and len(lv) == 8
    for _, r in lv.iterrows():
        assert r["density"] == pytest.approx(0.8 ** r["level"], rel=0.01)
        assert r["sparsity"] == pytest.approx(1 - r["density"])
        for k in ("test_acc", "train_acc_noisy", "train_acc_clean", "memorized", "test_acc_best"):
            assert 0 <= r[k] <= 1
        assert r["distance"] > 0 and r["effective_noise"] > 0
        assert set(r["layer_sparsity"]) == {"layers.0.weight", "layers.1.weight"}
    ep = load(store.root).epochs
    assert len(ep) == 8 * 3


def test_seeds_differ_and_runs_are_reproducible(tmp_path, tiny_sets):
    cfg, s1, r1 = do_run(tmp_path / "1", tiny_sets, "weight-rewind", ["seeds=2"])
    _, s2, r2 = do_run(tmp_path / "2", tiny_sets, "weight-rewind", ["seeds=2"])
    f1, f2 = finals(s1, r1), finals(s2, r2)
    assert all(same(a["model"], b["model"]) for a, b in zip(f1, f2))
    assert not torch.equal(f1[0]["model"]["layers.0.weight"], f1[3]["model"]["layers.0.weight"])


@pytest.mark.parametrize("method", ["random", "gradient"])
def test_other_pruning_methods_run(tmp_path, tiny_sets, method):
    cfg, store, rid = do_run(tmp_path, tiny_sets, "weight-rewind", [f"prune.method={method}", "prune.scope=layer"])
    f = finals(store, rid)
    for level, fin in enumerate(f):
        for n, m in fin["mask"].items():
            assert m.float().mean().item() == pytest.approx(0.8 ** level, abs=0.01)
            assert torch.all(fin["model"][n][~m] == 0)


def test_noise_saved_with_the_dense_stage_and_test_set_clean(tmp_path, tiny_sets, monkeypatch):
    seen = {}
    real = imp.train

    def spy(model, data, cfg, mask, **kw):
        seen.setdefault("data", data)
        return real(model, data, cfg, mask, **kw)

    monkeypatch.setattr(imp, "train", spy)
    cfg, store, rid = do_run(tmp_path, tiny_sets + ["data.noise=0.5", "prune.levels=1"], "weight-rewind")
    clean = load_dataset(cfg.data)
    saved = store.labels(store.stage_id(imp.dense_key(cfg)))
    assert len(saved["chosen"]) == 120  # ceil(0.5 * 240)
    assert torch.equal(saved["corrupted"], (saved["labels"] != clean.y_train).nonzero().squeeze(1))
    assert float(saved["effective_rate"]) == pytest.approx(len(saved["corrupted"]) / 240)
    d = seen["data"]
    assert torch.equal(d.y, saved["labels"]) and torch.equal(d.y_clean, clean.y_train)
    assert torch.equal(d.y_test, clean.y_test)  # the test set stays clean
    from sparsedd.results import load

    assert load(store.root).levels["effective_noise"].iloc[0] == pytest.approx(float(saved["effective_rate"]))


def test_runs_pruning_other_layers_share_the_dense_stage_but_prune_their_own_layers(tmp_path, tiny_sets):
    store = Store(tmp_path / "runs")
    masks = {}
    for layers in ("default", "all"):
        cfg = config_load.load(sets=[*tiny_sets, f"prune.layers={layers}", "prune.levels=1"])
        rid = run(cfg, store, options=ExecOptions(progress=False))
        dense, level1 = store.index.run_stages(rid).values()
        masks[layers] = (dense, store.final(level1)["mask"])
    assert masks["default"][0] == masks["all"][0]  # one dense stage
    assert set(masks["default"][1]) == {"layers.0.weight", "layers.1.weight"}
    assert set(masks["all"][1]) == {"layers.0.weight", "layers.1.weight", "layers.2.weight"}
    assert not bool(masks["all"][1]["layers.2.weight"].all())  # the output layer was pruned too
