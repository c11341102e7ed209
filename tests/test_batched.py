"""K networks trained at once equal the same networks trained one by one."""

import json

import pytest
import torch

from sparsedd import config_load
from sparsedd.config import ModelConfig, TrainConfig
from sparsedd.models import build_model
from sparsedd.pruning import full_mask, random
from sparsedd.store import FileCheckpointer
from sparsedd.training import TrainData, train
from sparsedd.training.batched import StackedMLP
from sparsedd.training.planner import train_batched


def setup(K=3, n=100, d=12, classes=4, hidden=(16, 8), noise=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    clean = torch.randint(0, classes, (n,), generator=g)
    datas, states, masks = [], [], []
    for k in range(K):
        y = clean.clone()
        if noise:  # each network its own noisy labels
            flip = torch.randperm(n, generator=torch.Generator().manual_seed(k))[:20]
            y[flip] = (y[flip] + 1) % classes
        corrupted = (y != clean).nonzero().squeeze(1)
        datas.append(TrainData(x, y, clean, x[:30], clean[:30], corrupted))
        model = build_model(ModelConfig("mlp", hidden), (d,), classes, seed=k)
        mask = full_mask(model, model.prunable_names())
        w = {n_: p.detach() for n_, p in model.named_parameters()}
        mask = random(w, mask, fraction=0.3 + 0.2 * k, scope="layer", generator=torch.Generator().manual_seed(k))
        states.append(model.state_dict())
        masks.append(mask)
    return datas, states, masks, (d, classes, hidden)


def separate(datas, states, masks, cfg, shape):
    d, classes, hidden = shape
    outs = []
    for k, (data, state, mask) in enumerate(zip(datas, states, masks)):
        model = build_model(ModelConfig("mlp", hidden), (d,), classes, seed=0)
        model.load_state_dict(state)
        res = train(model, data, cfg, mask, order_key=(k, "order"))
        outs.append((model.state_dict(), res))
    return outs


CFGS = [
    TrainConfig(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, epochs=3, batch_size=32, schedule="cosine"),
    TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-4, epochs=2, batch_size=40, eval_every=2),
    TrainConfig(lr=0.1, epochs=2, batch_size=25, schedule="multistep", milestones=(1,), warmup_epochs=1),
]


@pytest.mark.parametrize("cfg", CFGS)
def test_batched_equals_separate(cfg):
    datas, states, masks, shape = setup()
    ref = separate(datas, states, masks, cfg, shape)
    finals, results = train_batched(states, datas, cfg, masks, order_keys=[(k, "order") for k in range(3)])
    for k, (state, res) in enumerate(ref):
        for name, v in state.items():
            assert torch.allclose(finals[k][name], v, atol=1e-5, rtol=1e-4), (k, name)
        for name, m in masks[k].items():
            assert torch.all(finals[k][name][~m] == 0)
        assert len(results[k].history) == len(res.history)
        for a, b in zip(results[k].history, res.history):
            assert a.keys() == b.keys()
            for key in a:
                if a[key] is None:
                    assert b[key] is None
                else:
                    assert a[key] == pytest.approx(b[key], abs=1e-4)
        assert results[k].final["test_acc_best"] == pytest.approx(res.final["test_acc_best"])


def test_optimizer_state_of_each_network_matches():
    cfg = CFGS[0]
    datas, states, masks, shape = setup(K=2)
    ref = separate(datas, states, masks, cfg, shape)
    _, results = train_batched(states, datas, cfg, masks, order_keys=[(k, "order") for k in range(2)])
    for k, (_, res) in enumerate(ref):
        a, b = results[k].optimizer_state["state"], res.optimizer_state["state"]
        assert a.keys() == b.keys()
        for i in a:
            assert torch.allclose(a[i]["momentum_buffer"], b[i]["momentum_buffer"], atol=1e-5)


def test_stacked_forward_matches_each_network():
    datas, states, masks, (d, classes, hidden) = setup(K=4)
    stacked = StackedMLP(states)
    x = datas[0].x[:7]
    out = stacked.forward_shared(x)
    out2 = stacked(x.unsqueeze(0).expand(4, -1, -1))
    for k, s in enumerate(states):
        model = build_model(ModelConfig("mlp", hidden), (d,), classes, seed=0)
        model.load_state_dict(s)
        assert torch.allclose(out[k], model(x), atol=1e-6) and torch.allclose(out2[k], model(x), atol=1e-6)
    back = stacked.states()
    assert all(torch.equal(back[k][n], states[k][n]) for k in range(4) for n in states[k])


class _Stop(Exception):
    pass


def test_batched_resume_is_exact(tmp_path):
    cfg = CFGS[0]
    datas, states, masks, _ = setup()
    keys = [(k, "order") for k in range(3)]
    ref, _ = train_batched(states, datas, cfg, masks, order_keys=keys)

    class Dying(FileCheckpointer):
        def save(self, state):
            super().save(state)
            raise _Stop

    path = tmp_path / "c.pt"
    with pytest.raises(_Stop):
        train_batched(states, datas, cfg, masks, order_keys=keys, checkpoint=Dying(path, 0, 0))
    finals, _ = train_batched(states, datas, cfg, masks, order_keys=keys, checkpoint=FileCheckpointer(path, 1e9, 1e9))
    assert all(torch.equal(finals[k][n], ref[k][n]) for k in range(3) for n in ref[k])


@pytest.mark.parametrize("mode", ["finetune", "lr-rewind", "weight-rewind", "reinit"])
def test_pipeline_batched_seeds_equal_one_by_one(tmp_path, tiny_sets, mode):
    from sparsedd.experiments import ExecOptions, run
    from sparsedd.store import Store

    cfg = config_load.load(sets=[*tiny_sets, f"retrain.mode={mode}", "retrain.rewind_iteration=3"], seeds=3)
    finals = {}
    for batch in ("on", "off"):
        store = Store(tmp_path / str(batch == "on"))
        rid = run(cfg, store, options=ExecOptions(progress=False, batch=batch, sparse="off"))
        finals[batch == "on"] = [(seed, level, sid, store.final(sid))
                                 for (seed, level), sid in store.index.run_stages(rid).items()]
    assert len(finals[True]) == 9
    assert not list((tmp_path / "True").rglob("checkpoint.pt"))
    for (s1, l1, id1, a), (s2, l2, id2, b) in zip(finals[True], finals[False]):
        assert (s1, l1, id1) == (s2, l2, id2)  # the same stages, whichever way they were trained
        for n in a["mask"]:
            assert torch.equal(a["mask"][n], b["mask"][n])
        for n in a["model"]:
            assert torch.allclose(a["model"][n], b["model"][n], atol=1e-5, rtol=1e-4), (s1, l1, n)


def test_batching_decision_is_measured_cached_and_capped(tmp_path, tiny_sets, monkeypatch):
    import sparsedd.experiments.batching as imp
    from sparsedd.experiments import ExecOptions, run
    from sparsedd.store import Store
    from sparsedd.training.batched import max_models
    from sparsedd.training.planner import batching_pays, measure_batching

    got = measure_batching((12, 16, 8, 4), 32, 3, "cpu", steps=2)
    assert got["single_s"] > 0 and got["batched_s"] > 0 and got["pays"] == (got["batched_s"] < 0.9 * got["single_s"])
    model = build_model(ModelConfig("mlp", (16, 8)), (12,), 4, seed=0)
    cache = tmp_path / "batching.json"
    first = batching_pays(model, 32, 3, str(cache))
    assert cache.exists() and batching_pays(model, 32, 3, str(cache)) == first
    # a cache damaged into other JSON is measured again and written anew (found by review: a TypeError traceback)
    for damaged in ("[]", '{"x": 1}', json.dumps({k: {"pays": "yes"} for k in json.loads(cache.read_text())})):
        cache.write_text(damaged)
        assert batching_pays(model, 32, 3, str(cache)) in (True, False)
        table = json.loads(cache.read_text())  # (other keys are left as they are)
        assert any(isinstance(v, dict) and isinstance(v.get("pays"), bool) for v in table.values())
    assert max_models(model, 32, "cpu") > 1000 and max_models(model, 32, "cpu", share=1e-9) == 1

    # a level's jobs are trained in groups no larger than what fits
    groups = []
    monkeypatch.setattr(imp, "max_models", lambda *a, **k: 2)
    real = imp.train_together
    monkeypatch.setattr(imp, "train_together", lambda group, *a: (groups.append(len(group)), real(group, *a)))
    cfg = config_load.load(sets=tiny_sets, seeds=3)
    run(cfg, Store(tmp_path / "runs"), options=ExecOptions(progress=False, batch="on", sparse="off"))
    assert groups == [2] * 3  # three levels, each 3 seeds as a batched 2 and one alone


@pytest.fixture
def stack_or_compact(monkeypatch, tiny_sets):
    """Every level's seeds could stack or run compact (the crossover says compact everywhere); ``faster[0]``
    scripts which way the probe finds faster, ``timings`` lists what it timed, ``groups`` the stacked groups'
    sizes, and ``stop_at[0]`` raises KeyboardInterrupt at that epoch (1-based, over the whole run, after its
    checkpoint). The probe's work really runs, so that any effect it had on training would show."""
    import sparsedd.experiments.batching as batching
    import sparsedd.experiments.progress as progress
    import sparsedd.training.sparse as sparse

    monkeypatch.setattr(sparse, "crossover_for", lambda *a, **k: {"crossover": 1.0, "kernel_below": 0.5})
    monkeypatch.setattr(batching, "batching_pays", lambda *a, **k: True)
    faster, timings, groups, stop_at, count = ["stacked"], [], [], [None], [0]

    def scripted(work, device):
        work()
        timings.append(work.__name__)
        return {"stacked": 3 * (0.5 if faster[0] == "stacked" else 2.0), "alone": 1.0}[work.__name__]

    real_together, real_epoch = batching.train_together, progress.Progress.epoch

    def epoch(self, metrics, advance_total=1):
        count[0] += 1
        if count[0] == stop_at[0]:
            raise KeyboardInterrupt
        real_epoch(self, metrics, advance_total)

    monkeypatch.setattr(batching, "timed", scripted)
    monkeypatch.setattr(batching, "train_together", lambda group, *a: (groups.append(len(group)), real_together(group, *a)))
    monkeypatch.setattr(progress.Progress, "epoch", epoch)
    # 60 steps per epoch x 5 epochs: long enough for the probe (at least 10 x PROBE_STEPS)
    cfg = config_load.load(sets=[*tiny_sets, "train.batch_size=4", "train.epochs=5"], seeds=3)
    return cfg, faster, timings, groups, stop_at, count


def finals_of(root, cfg, options):
    from sparsedd.experiments import run
    from sparsedd.store import Store

    store = Store(root)
    rid = run(cfg, store, options=options)
    return {key: store.final(sid)["model"] for key, sid in store.index.run_stages(rid).items()}


def assert_same_finals(a, b):
    assert a.keys() == b.keys()
    for key, model in a.items():
        assert all(torch.equal(model[n], b[key][n]) for n in model), key


@pytest.mark.parametrize("faster", ["stacked", "alone"])
def test_jobs_that_could_stack_or_run_compact_take_the_faster_way_timed_on_copies(tmp_path, stack_or_compact, faster):
    """The measured case: paper-mnist-lenet's 5 seeds ran compact one by one at about 1.3x the time of stacked.
    The choice is timed on the level's real jobs; the timing must leave their training exactly as without it."""
    from sparsedd.experiments import ExecOptions

    cfg, scripted, timings, groups, _, _ = stack_or_compact
    scripted[0] = faster
    auto = finals_of(tmp_path / "auto", cfg, ExecOptions(progress=False))
    assert timings == ["stacked", "alone"] * 3  # each level, once
    assert groups == ([3] * 3 if faster == "stacked" else [])
    same_way = ExecOptions(progress=False, batch="on" if faster == "stacked" else "off")  # compact either way
    assert_same_finals(auto, finals_of(tmp_path / "same way", cfg, same_way))
    assert len(timings) == 6  # --batch on and off time nothing


@pytest.mark.parametrize("started", ["stacked", "alone"])
def test_an_interrupted_level_resumes_the_way_it_started_whatever_the_timing_says_then(tmp_path, stack_or_compact,
                                                                                       started):
    from sparsedd.experiments import ExecOptions

    cfg, faster, timings, groups, stop_at, count = stack_or_compact
    options = ExecOptions(progress=False, checkpoint_epoch_s=0)
    faster[0] = started
    reference = finals_of(tmp_path / "reference", cfg, options)
    timings.clear()
    count[0] = 0
    stop_at[0] = (5 if started == "stacked" else 3 * 5) + 2  # level 0's epochs (a batch's count once), then 2
    with pytest.raises(KeyboardInterrupt):  # in level 1, after its second epoch
        finals_of(tmp_path / "resumed", cfg, options)
    faster[0] = "alone" if started == "stacked" else "stacked"  # the timing now says the other way
    timings.clear()
    resumed = finals_of(tmp_path / "resumed", cfg, options)
    assert timings == ["stacked", "alone"]  # only level 2 was timed again: level 1 went on as it started
    assert_same_finals({k: v for k, v in resumed.items() if k[1] <= 1}, {k: v for k, v in reference.items() if k[1] <= 1})
