"""Issue 27, items 2 and 5: `memorization` (which noisy labels each level's network fits, checked against the
stored weights and labels) and `stability` (two copies on other data orders, the error barrier between
them), on tiny runs: from the CLI, the API and the report, cached, stacked as one by one."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sparsedd.analysis.memorization import NEVER, freeing_order, last_fitted, transitions
from sparsedd.analysis.stats import spearman
from sparsedd.cli import main
from sparsedd.store import Store


def make_run(root, sets, seeds=2):
    args = ["run", "--root", str(root), "--no-progress", "--seeds", str(seeds), "--batch", "off", "--sparse", "off"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    return next((root / "runs").iterdir()).name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("memstab")
    return root, make_run(root, TINY + ["data.noise=0.4"])


def analyze(capsys, root, run_id, *args):
    capsys.readouterr()
    assert main(["analyze", run_id, *args, "--root", str(root), "--format", "json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_numerics_on_a_known_picture():
    m = np.array([[1, 1, 1, 0, 1],   # level 0
                  [1, 0, 1, 0, 1],   # level 1: example 1 forgotten
                  [0, 1, 1, 0, 0]])  # level 2: 0 and 4 forgotten, 1 fitted again
    assert last_fitted([0, 1, 2], m).tolist() == [1, 2, 2, NEVER, 1]
    assert freeing_order([0, 1, 2], m).tolist() == [3, 0, 4, 1, 2]  # never, then by last level, then by count
    assert transitions(None, [1, 0]) == (None, None)
    assert transitions(m[1].tolist(), m[2].tolist()) == (2, 1)


def stored_truth(root, run_id, seed):
    """From the store alone: the corrupted examples, and per level whether the level's final weights predict
    each one's stored noisy label."""
    from sparsedd.config_load import from_dict
    from sparsedd.models import build_model
    from sparsedd.results import run_config
    from sparsedd.data import load_dataset

    store = Store(root)
    links = store.index.run_stages(run_id)
    cfg = from_dict(run_config(store, run_id))
    labels = store.labels(links[(seed, 0)])
    x = load_dataset(cfg.data).x_train
    out = {}
    for (s, level), sid in sorted(links.items()):
        if s == seed:
            model = build_model(cfg.model, tuple(x.shape[1:]), 10, 0)
            model.load_state_dict(store.final(sid)["model"])
            with torch.no_grad():
                model.eval()
                out[level] = model(x)[labels["corrupted"]]
    return labels, out, load_dataset(cfg.data).y_train


def test_memorization_matches_the_stored_weights_and_labels(tiny, capsys):
    root, run_id = tiny
    table = analyze(capsys, root, run_id, "memorization")
    assert [r["seed"] for r in table] == [0, 1, "mean"]
    from sparsedd.results import load

    res = load(root)
    rows = res.analyses[(res.analyses["run_id"] == run_id) & (res.analyses["kind"] == "memorization")]
    assert len(rows) == 2 * 3  # a cached result per seed and level
    levels = res.levels[res.levels["run_id"] == run_id]
    for seed in (0, 1):
        labels, logits, y_clean = stored_truth(root, run_id, seed)
        corrupted = labels["corrupted"]
        noisy, clean = labels["labels"][corrupted], y_clean[corrupted]
        assert len(corrupted) > 50
        mine = {int(r["level"]): r["result"] for _, r in rows[rows["seed"] == seed].iterrows()}
        truth = {lv: (lg.argmax(1) == noisy).int().tolist() for lv, lg in logits.items()}
        for lv in (0, 1, 2):
            assert mine[lv]["fitted_examples"] == truth[lv]
            recorded = levels[(levels["seed"] == seed) & (levels["level"] == lv)]["memorized"].iloc[0]
            assert mine[lv]["memorized"] == pytest.approx(recorded)  # the run's own metric, per example
        assert mine[0]["examples"] == corrupted.tolist()
        for lv in (1, 2):
            before, now = np.array(truth[lv - 1]), np.array(truth[lv])
            assert (mine[lv]["forgotten"], mine[lv]["refitted"]) == (int((before > now).sum()), int((now > before).sum()))
        loss_clean = F.cross_entropy(logits[0], clean, reduction="none")
        assert mine[0]["loss_clean"] == pytest.approx(loss_clean.tolist(), rel=1e-5)
        last = last_fitted([0, 1, 2], np.array([truth[0], truth[1], truth[2]]))
        r = table[seed]
        assert r["spearman_clean_loss"] == pytest.approx(spearman(last, loss_clean.tolist()), rel=1e-4, nan_ok=True)
        assert r["fitted"] == [sum(truth[lv]) for lv in (0, 1, 2)] and r["corrupted"] == len(corrupted)
        assert r["forgotten"] == sum(mine[lv]["forgotten"] for lv in (1, 2))
    assert table[2]["corrupted"] == table[0]["corrupted"]  # one noise draw for every seed
    assert -1 <= table[2]["seed_agreement"] <= 1


def test_memorization_is_cached_and_reached_from_the_api(tmp_path, monkeypatch, capsys):
    import sparsedd
    import sparsedd.analysis.kinds.memorization as mem
    from conftest import TINY

    run_id = make_run(tmp_path, TINY + ["data.noise=0.4"])  # its own store: nothing computed before
    capsys.readouterr()
    first = sparsedd.analyze(run_id, "memorization", root=tmp_path, progress=True)
    said = capsys.readouterr().err.splitlines()
    assert said == [f"sparsedd: memorization: seed {s} level {lv}" for s in (0, 1) for lv in range(3)]
    calls = []
    monkeypatch.setattr(mem, "predict", lambda *a, **kw: calls.append(1))
    again = sparsedd.analyze(run_id, "memorization", root=tmp_path, progress=True)
    assert not calls  # every level read back from the store
    pd.testing.assert_frame_equal(again, first)
    assert capsys.readouterr().err == ""  # levels read back are quick, and not said


def test_stability_trains_two_copies_from_the_start_weights_on_other_orders(tiny, capsys, monkeypatch):
    import sparsedd.analysis.runner as runner

    root, run_id = tiny
    seen = []
    real = runner.train

    def spy(model, data, cfg, mask, **kw):
        seen.append({"start": {k: v.clone() for k, v in model.state_dict().items()}, "mask": mask, "cfg": cfg, **kw})
        return real(model, data, cfg, mask, **kw)

    monkeypatch.setattr(runner, "train", spy)
    rows = analyze(capsys, root, run_id, "stability", "--levels", "2", "--seeds", "0", "--set", "alphas=5",
                   "--batch", "off")
    assert len(rows) == 1 and len(seen) == 2 and [p["alpha"] for p in rows[0]["points"]] == [0, 0.25, 0.5, 0.75, 1]
    store = Store(root)
    links = store.index.run_stages(run_id)
    final2 = store.final(links[(0, 2)])
    init = store.init(links[(0, 0)])  # weight rewinding to iteration 0: level 2 starts from the dense init
    for s in seen:
        assert all(torch.equal(s["start"][k], init[k]) for k in init)
        assert all(torch.equal(s["mask"][k], final2["mask"][k]) for k in final2["mask"])
        assert s["cfg"].epochs == 3 and s["order_key"] != (0, "order")
    assert seen[0]["order_key"] != seen[1]["order_key"]
    pts = rows[0]["points"]
    errs = [1 - p["test_acc"] for p in pts]
    assert rows[0]["test_error_barrier"] == pytest.approx(max(errs) - (errs[0] + errs[-1]) / 2)
    assert rows[0]["test_error_barrier"] >= 0 and rows[0]["train_error_barrier"] >= 0
    assert rows[0]["level_test_acc"] == pytest.approx(store.done_info(links[(0, 2)])["metrics"]["test_acc"])
    assert pts[0]["train_loss"] != pts[-1]["train_loss"]  # the two orders gave two networks
    seen.clear()
    assert analyze(capsys, root, run_id, "stability", "--levels", "2", "--seeds", "0", "--set", "alphas=5") == rows
    assert not seen  # cached


def test_stability_stacked_equals_one_by_one_and_the_report_draws_both(tiny, tmp_path, capsys, monkeypatch):
    import shutil

    import sparsedd.training.planner as planner
    from sparsedd.report.html import write_report

    root, run_id = tiny
    for batch in ("on", "off"):
        shutil.copytree(root, tmp_path / batch)
    stacked, real = [], planner.train_batched
    monkeypatch.setattr(planner, "train_batched", lambda st, *a, **kw: stacked.append(len(st)) or real(st, *a, **kw))
    rows = {b: analyze(capsys, tmp_path / b, run_id, "stability", "--levels", "0,1", "--set", "alphas=3", "--batch", b)
            for b in ("on", "off")}
    assert stacked == [4, 4]  # per level: 2 seeds x 2 copies
    for a, b in zip(rows["on"], rows["off"]):
        assert (a["seed"], a["level"]) == (b["seed"], b["level"])
        for f in ("test_error_barrier", "train_error_barrier", "copies_test_acc"):
            assert a[f] == pytest.approx(b[f], abs=2e-3), (a["seed"], a["level"], f)
    analyze(capsys, tmp_path / "on", run_id, "memorization")
    out = write_report(tmp_path / "on", [run_id], tmp_path / "report")
    page = out.read_text()
    for kind in ("memorization", "stability"):
        assert (tmp_path / "report" / "figures" / f"{run_id}-{kind}.png").stat().st_size > 5000
        assert f"{kind} results" in page


@pytest.mark.parametrize("args, words", [
    (["stability", "--set", "alphas=2"], "alphas must be in [3,"),
    (["stability", "--set", "seed=-1"], "seed must be >= 0"),
    (["memorization", "--set", "tol=1"], "unknown setting 'tol'"),
])
def test_bad_settings_are_one_line(tiny, capsys, args, words):
    root, run_id = tiny
    assert main(["analyze", run_id, *args, "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_memorization_without_label_noise_says_so(tmp_path, capsys):
    from conftest import TINY

    run_id = make_run(tmp_path, [s for s in TINY if not s.startswith("prune.levels")] + ["data.noise=0", "prune.levels=1"],
                      seeds=1)
    capsys.readouterr()
    assert main(["analyze", run_id, "memorization", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs corrupted labels" in err and len(err.splitlines()) == 1
