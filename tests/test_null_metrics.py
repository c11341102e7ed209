"""Issue 13, point 1: metrics that are NULL (memorized without label noise) or not finite (a diverged run)
are valid values everywhere; a diverged run stops early, is marked diverged and says so."""

import json
import math
import re

import pytest
import torch

import sparsedd
from sparsedd.cli import main
from sparsedd.config import TrainConfig
from sparsedd.store import FileCheckpointer, Store
from sparsedd.training import train
from sparsedd.training.planner import train_batched
from test_batched import setup


def strict_json(text: str):
    """JSON as other tools read it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two stores: a clean-label run (memorized NULL in every row of its store) from a preset, and a run
    that diverges at its first epoch, from a --config file alone (no preset), two seeds trained batched."""
    from conftest import TINY

    base = tmp_path_factory.mktemp("null")
    clean_root, root = base / "clean", base / "diverged"
    assert main(["run", "--root", str(clean_root), "--no-progress", *sets(TINY + ["data.noise=0"])]) == 0
    config = base / "diverges.toml"
    config.write_text('[data]\nnum_train = 240\nnum_test = 120\n[model]\nhidden = [32, 32]\n'
                      '[train]\nepochs = 3\nbatch_size = 32\nlr = 10000.0\nmomentum = 0.9\n[prune]\nlevels = 2\n')
    assert main(["run", "--root", str(root), "--no-progress", "--config", str(config), "--seeds", "2",
                 "--batch", "on", "--sparse", "off"]) == 0
    [clean], [diverged] = Store(clean_root).index.run_ids(), Store(root).index.run_ids()
    return clean_root, clean, root, diverged, config


def test_show_json_is_strict_json_with_null_metrics(store, capsys):
    root, clean, *_ = store
    capsys.readouterr()
    assert main(["show", clean, "--root", str(root), "--format", "json"]) == 0
    doc = strict_json(capsys.readouterr().out)
    assert [r["level"] for r in doc["levels"]] == [0, 1, 2]
    assert all(r["memorized"] is None for r in doc["levels"])
    assert all(0 < r["test_acc"] <= 1 for r in doc["levels"])


def test_show_tables_print_a_dash_for_null(store, capsys):
    root, clean, *_ = store
    capsys.readouterr()
    assert main(["show", clean, "--root", str(root), "--format", "markdown"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == 3 and all(r.split("|")[7].strip() == "-" for r in rows)  # the memorized column
    assert main(["show", clean, "--root", str(root)]) == 0
    assert "nan" not in capsys.readouterr().out


def test_ls_json_is_valid_for_a_run_without_a_preset(store, capsys):
    clean_root, clean, root, diverged, _ = store
    capsys.readouterr()
    assert main(["ls", "--root", str(root), "--format", "json"]) == 0
    [row] = strict_json(capsys.readouterr().out)
    assert row["run"] == diverged and row["preset"] is None and row["status"] == "diverged"
    assert main(["ls", "--root", str(clean_root), "--format", "json"]) == 0
    [row] = strict_json(capsys.readouterr().out)
    assert row["preset"] == "mnist1d-quick" and row["error"] is None


def test_results_load_gives_float_metrics_with_nan(store):
    clean_root, _, root, _, _ = store
    clean, diverged = sparsedd.load(clean_root), sparsedd.load(root)
    assert clean.levels["memorized"].dtype == float and clean.levels["memorized"].isna().all()
    assert clean.epochs["memorized"].dtype == float and clean.epochs["memorized"].isna().all()
    assert diverged.levels["distance"].dtype == float and diverged.levels["distance"].isna().all()  # NaN weights


def test_report_and_tensorboard_skip_null_points(store, tmp_path, capsys):
    clean_root, clean, root, diverged, _ = store
    assert main(["report", diverged, diverged[:6], "--root", str(root), "--out", str(tmp_path / "diverged")]) == 0
    page = (tmp_path / "diverged" / "index.html").read_text()
    assert f"figures/{diverged}-curve.png" in page
    # (found by audit) the run's status is on the page; one run named twice is shown once, and not overlaid
    assert "<strong>This run is diverged: training loss not finite" in page
    assert page.count(f"figures/{diverged}-curve.png") == 1 and "Runs overlaid" not in page
    out = tmp_path / "report"
    assert main(["report", clean, "--root", str(clean_root), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert f"figures/{clean}-curve.png" in page and "This run is" not in page  # (complete)
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert "-" in cells and not {"None", "nan", "[nan]", "NaN"} & set(cells)  # a missing value as the CLI shows it
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / f"{clean}-seed0"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "levels/test_acc" in tags and "levels/memorized" not in tags  # a gap, not a crash or a fake 0


def test_a_diverged_run_stops_early_and_is_marked_diverged(store, capsys):
    _, _, root, diverged, config = store
    res = sparsedd.load(root).only([diverged])
    run = res.runs.iloc[0]
    assert run["status"] == "diverged"
    assert "training loss not finite (seed 0 at level 0, epoch 1; seed 1 at level 0, epoch 1)" in run["error"]
    assert sorted(res.levels["level"]) == [0, 0]  # no level is pruned from weights that are not finite
    assert res.epochs["epoch"].tolist() == [1, 1]  # of 3: training stopped at the first epoch
    s = Store(root)
    for (seed, level), sid in s.index.run_stages(diverged).items():
        done = s.done_info(sid)
        assert done["metrics"]["diverged"] is True and done["metrics"]["diverged_epoch"] == 1
        assert not math.isfinite(done["history"][-1]["train_loss_running"])
        assert "test_acc" in done["history"][-1]  # evaluated where it stopped, though eval was not due

    # run again: the stages are done, so it is diverged again at once, and says so on stderr (exit 0)
    capsys.readouterr()
    assert main(["run", "--root", str(root), "--no-progress", "--config", str(config), "--seeds", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sparsedd: note: run {diverged} diverged: training loss not finite")
    assert s.index.run_status(diverged) == "diverged"


def test_training_stops_at_the_epoch_the_loss_stops_being_finite():
    datas, states, masks, _ = setup(K=1)
    from sparsedd.models import build_model
    from sparsedd.config import ModelConfig

    model = build_model(ModelConfig("mlp", (16, 8)), (12,), 4, seed=0)
    model.load_state_dict({k: v * 1e30 for k, v in states[0].items()})  # logits overflow at the first step
    res = train(model, datas[0], TrainConfig(epochs=4, batch_size=32, eval_every=3), masks[0], order_key=(0, "order"))
    assert len(res.history) == 1 and not math.isfinite(res.history[0]["train_loss_running"])
    assert res.final["diverged"] is True and res.final["diverged_epoch"] == 1 and "test_acc" in res.final


def test_in_a_batch_only_the_diverged_network_stops_and_resume_agrees(tmp_path):
    cfg = TrainConfig(lr=0.05, momentum=0.9, epochs=3, batch_size=32)
    datas, states, masks, _ = setup(K=2)
    states[1] = {k: v * 1e30 for k, v in states[1].items()}
    keys = [(k, "order") for k in range(2)]
    ref_finals, ref = train_batched(states, datas, cfg, masks, order_keys=keys)
    alone = train_batched(states[:1], datas[:1], cfg, masks[:1], order_keys=keys[:1])[1][0]
    assert [len(r.history) for r in ref] == [3, 1]
    assert "diverged" not in ref[0].final and ref[1].final["diverged"] is True
    assert [h["train_loss_running"] for h in ref[0].history] == pytest.approx(
        [h["train_loss_running"] for h in alone.history], rel=1e-5)  # the other network is unaffected

    class Dying(FileCheckpointer):  # killed at the checkpoint after epoch 2, when network 1 has stopped
        def save(self, state):
            super().save(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt

    path = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        train_batched(states, datas, cfg, masks, order_keys=keys, checkpoint=Dying(path, 1e9, 0))
    finals, resumed = train_batched(states, datas, cfg, masks, order_keys=keys, checkpoint=FileCheckpointer(path, 1e9, 1e9))
    assert [len(r.history) for r in resumed] == [3, 1] and resumed[1].final["diverged"] is True
    assert all(torch.equal(finals[0][n], ref_finals[0][n]) for n in ref_finals[0])
