"""The width-matched dense control (`sparsedd analyze RUN dense-control`) and the level picked without test
labels (`sparsedd analyze RUN select`)."""

import json
import math

import pandas as pd
import pytest
import torch

from sparsedd.analysis.kinds.dense_control import matched_model, weight_count
from sparsedd.analysis.kinds.select import SelectSettings, selection_table
from sparsedd.cli import main
from sparsedd.config import ModelConfig
from sparsedd.errors import SparseddError


def _run(root, *sets, seeds=1):
    from conftest import TINY

    args = ["run", "--root", str(root), "--no-progress", "--seeds", str(seeds)]
    assert main(args + [a for s in TINY + list(sets) for a in ("--set", s)]) == 0
    return next((root / "runs").iterdir()).name


def _analyze(capsys, root, run_id, *args):
    capsys.readouterr()  # what ran before
    assert main(["analyze", run_id, *args, "--root", str(root), "--format", "json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_matched_widths_are_the_nearest_count_any_scale_gives():
    cfg, shape = ModelConfig("mlp", (32, 16)), (40,)
    count = lambda h: 40 * h[0] + h[0] + h[0] * h[1] + h[1] + 10 * h[1] + 10  # noqa: E731  (weights and biases)
    # every width pair a single factor reaches (widths round(32 f), round(16 f), at least 1)
    reachable = {tuple(max(1, round(w * f / 1000)) for w in (32, 16)) for f in range(0, 10_000)}
    for target in (1, 300, 1234, 5000, 20_000, count((32, 16))):
        got, n = matched_model(cfg, shape, 10, "magnitude", "default", "all", target)
        assert got.name == "mlp" and n == count(got.hidden)
        assert abs(n - target) == min(abs(count(h) - target) for h in reachable)
    assert matched_model(cfg, shape, 10, "magnitude", "default", "all", 1)[0].hidden == (1, 1)
    assert matched_model(cfg, shape, 10, "magnitude", "default", "all", count((32, 16)))[0].hidden == (32, 16)
    # prunable only: the hidden layers' weights (not the output layer's, nor biases)
    assert weight_count(cfg, shape, 10, "magnitude", "default", "prunable") == 40 * 32 + 32 * 16
    # lenet-300-100 is scaled as an mlp of its widths; a conv net by model.width
    lenet = weight_count(ModelConfig("lenet-300-100"), (1, 28, 28), 10, "magnitude", "default", "all")
    got, n = matched_model(ModelConfig("lenet-300-100"), (1, 28, 28), 10, "magnitude", "default", "all", lenet // 4)
    assert got.name == "mlp" and got.hidden[0] > got.hidden[1] and abs(n - lenet // 4) < lenet // 40
    resnet = ModelConfig("resnet18", width=8)
    target = weight_count(resnet, (3, 16, 16), 10, "magnitude", "default", "all")
    assert matched_model(ModelConfig("resnet18"), (3, 16, 16), 10, "magnitude", "default", "all", target)[0].width == 8
    with pytest.raises(SparseddError, match="cannot scale.*'my.models:net'"):
        matched_model(ModelConfig("my.models:net"), shape, 10, "magnitude", "default", "all", 100)


def test_dense_control_trains_the_dense_recipe_at_matched_width_seeded_per_level(tmp_path, capsys, monkeypatch):
    import sparsedd.analysis.runner as runner
    from sparsedd.analysis.runner import Analyzer
    from sparsedd.store import Store

    root = tmp_path / "s"  # finetuning: the levels train at 0.001, the dense recipe at 0.1
    run_id = _run(root, "retrain.mode=finetune", "retrain.finetune_lr=0.001")
    seen, real = [], runner.train

    def spy(model, data, cfg, mask, **kw):
        seen.append({"cfg": cfg, "y": data.y.clone(), "shapes": [tuple(p.shape) for p in model.parameters()],
                     "init": {k: v.clone() for k, v in model.state_dict().items()}, "mask": mask})
        return real(model, data, cfg, mask, **kw)

    monkeypatch.setattr(runner, "train", spy)
    rows = _analyze(capsys, root, run_id, "dense-control", "--levels", "0,2")
    a = Analyzer(Store(root), run_id)
    assert [r["level"] for r in rows] == [0, 2] and len(seen) == 2
    for s in seen:
        assert s["cfg"] == a.cfg.train and s["cfg"].lr == 0.1
        assert torch.equal(s["y"], a.replicate(0).train_data.y)  # the replicate's noisy labels
        assert all(bool(m.all()) for m in s["mask"].values())  # dense: nothing masked
    dense, level2 = rows
    assert dense["dense_hidden"] == [32, 32] and dense["dense_weights"] == dense["weights"]
    assert seen[0]["shapes"][0] == (32, 40)
    level_final = a.store.final(a.links[(0, 2)])
    kept = sum(int(m.sum()) for m in level_final["mask"].values())
    assert level2["remaining"] == kept and level2["weights"] < dense["weights"]
    assert level2["dense_hidden"][0] < 32 and abs(level2["dense_weights"] - level2["weights"]) < 60
    assert seen[1]["shapes"][0] == (level2["dense_hidden"][0], 40)
    assert not torch.equal(seen[0]["init"]["layers.0.weight"], a.store.init(a.links[(0, 0)])["layers.0.weight"])
    assert 0.0 <= level2["dense_test_acc"] <= 1.0 and 0.0 <= level2["dense_train_acc_noisy"] <= 1.0
    seen.clear()  # cached: asked again, nothing trains
    assert _analyze(capsys, root, run_id, "dense-control", "--levels", "0,2") == rows and not seen
    # counting prunable weights only is another result, matched on the hidden layers' weights alone
    prunable = _analyze(capsys, root, run_id, "dense-control", "--levels", "2", "--set", "count=prunable")[0]
    assert prunable["weights"] == kept and len(seen) == 1
    # the report overlays both curves against the weights
    from sparsedd.report.html import write_report

    html = write_report(root, [run_id], tmp_path / "rep").read_text()
    assert f"{run_id}-dense-control.png" in html and "dense-control results" in html


def _curve(val, test, distance):
    """Rows of a run's curve: per seed, per level, the given validation and test accuracies and distances."""
    return pd.DataFrame([{"seed": s, "level": lv, "val_acc": v, "test_acc": t, "distance": d}
                         for s, (vs, ts, ds) in enumerate(zip(val, test, distance))
                         for lv, (v, t, d) in enumerate(zip(vs, ts, ds))])


def test_selection_picks_by_validation_and_measures_regret_against_the_test_sweet_spot():
    val = [[0.40, 0.50, 0.45, 0.30], [0.40, 0.44, 0.52, 0.30], [0.41, 0.50, 0.49, 0.30]]
    test = [[0.40, 0.50, 0.52, 0.30], [0.40, 0.50, 0.51, 0.30], [0.40, 0.49, 0.52, 0.30]]
    dist = [[9, 8, 7, 6], [9, 8, 7, 6], [9, 8, 7, 6]]
    t = selection_table(_curve(val, test, dist), SelectSettings(tolerance=0.1)).set_index("rule")
    assert t.loc["validation", "picked"] == "1 2 1" and t.loc["validation", "best_test_level"] == "2 2 2"
    regrets = [0.02, 0.0, 0.03]
    assert t.loc["validation", "regret"] == pytest.approx(sum(regrets) / 3)
    assert t.loc["validation", "regret_lo"] < t.loc["validation", "regret"] < t.loc["validation", "regret_hi"]
    assert t.loc["validation", "verdict"] == "regret < 0.1: holds"
    assert t.loc["min-distance", "picked"] == "3 3 3"
    assert t.loc["min-distance", "regret"] == pytest.approx((0.22 + 0.21 + 0.22) / 3)
    assert t.loc["min-distance", "verdict"] == "regret < 0.1: does not hold"
    assert t.loc["min-distance", "spearman"] < 0 < t.loc["validation", "spearman"]
    assert t.loc["dense", "picked"] == "0 0 0" and math.isnan(t.loc["dense", "spearman"])
    # a run still going: only the levels every seed has finished (seed 2 lacks level 3 here)
    partial = _curve(val, test, dist)
    partial = partial[~((partial["seed"] == 2) & (partial["level"] == 3))]
    p = selection_table(partial, SelectSettings()).set_index("rule")
    assert p.loc["validation", "levels"] == 3 and p.loc["min-distance", "picked"] == "2 2 2"
    two = selection_table(_curve(val[:2], test[:2], dist[:2]), SelectSettings(tolerance=0.05))
    assert set(two["verdict"]) == {"regret < 0.05: inconclusive"}  # fewer than three seeds: no verdict
    with pytest.raises(SparseddError, match="data.val_split=0.1"):
        selection_table(_curve(val, test, dist).drop(columns="val_acc"), SelectSettings())
    with pytest.raises(SparseddError, match="stop must be"):
        SelectSettings(stop="early")


def test_select_on_a_run_with_a_validation_split_and_the_one_line_refusal_without(tmp_path, capsys):
    from sparsedd.results import run_curve
    from sparsedd.store import Store

    run_id = _run(tmp_path / "v", "data.val_split=0.2", seeds=2)
    rows = {r["rule"]: r for r in _analyze(capsys, tmp_path / "v", run_id, "select")}
    curve = run_curve(Store(tmp_path / "v"), run_id)
    picked = [int(g.sort_values("level").reset_index(drop=True)["val_acc"].idxmax()) for _, g in curve.groupby("seed")]
    assert rows["validation"]["picked"] == " ".join(map(str, picked)) and rows["validation"]["seeds"] == 2
    assert rows["validation"]["regret"] >= 0 and rows["dense"]["picked"] == "0 0"
    best = _analyze(capsys, tmp_path / "v", run_id, "select", "--set", "stop=best-val")
    assert {r["stop"] for r in best} == {"best-val"}
    capsys.readouterr()
    assert main(["show", run_id, "--root", str(tmp_path / "v"), "--format", "json"]) == 0  # (found by audit: missing)
    doc = json.loads(capsys.readouterr().out)
    shown = {(r["seed"], r["level"]): (r["val_acc"], r["test_acc_at_best_val"]) for r in doc["levels"]}
    assert shown == {(int(s), int(lv)): (v, t) for s, lv, v, t in
                     zip(curve["seed"], curve["level"], curve["val_acc"], curve["test_acc_at_best_val"])}
    assert doc["mean"][0]["val_acc"] == pytest.approx(curve[curve["level"] == 0]["val_acc"].mean())
    plain = _run(tmp_path / "p")
    capsys.readouterr()  # what the run said
    assert main(["analyze", plain, "select", "--root", str(tmp_path / "p"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set data.val_split=0.1" in err


def test_dense_control_trains_a_levels_seeds_stacked_as_it_would_one_by_one(tmp_path, capsys, monkeypatch):
    import shutil

    import sparsedd.training.planner as planner

    run_id = _run(tmp_path / "on", seeds=2)
    shutil.copytree(tmp_path / "on", tmp_path / "off")
    stacked, real = [], planner.train_batched
    monkeypatch.setattr(planner, "train_batched",
                        lambda states, *a, **kw: stacked.append(len(states)) or real(states, *a, **kw))
    on, off = (_analyze(capsys, tmp_path / b, run_id, "dense-control", "--levels", "1,2", "--batch", b)
               for b in ("on", "off"))
    assert stacked == [2, 2]  # per level, the 2 seeds' dense controls (of one width) as one computation
    assert [(r["seed"], r["level"]) for r in on] == [(r["seed"], r["level"]) for r in off]
    assert [(r["seed"], r["level"]) for r in on] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for a, b in zip(on, off):
        assert a["dense_hidden"] == b["dense_hidden"] and a["dense_hidden"][0] < 32
        assert a["dense_test_acc"] == pytest.approx(b["dense_test_acc"], abs=1e-6)
        assert a["dense_train_acc_noisy"] == pytest.approx(b["dense_train_acc_noisy"], abs=1e-6)
