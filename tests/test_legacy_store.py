"""A store written by the code before the store refactor (commit 2a2d2e2) is read and resumed by this code.

The fixture (tests/fixtures/legacy-store/, made by tests/fixtures/make_legacy_store.py) holds two runs of
the tiny configuration with two seeds, the dense stage and level 1 done, level 2 interrupted: in the
weight-rewind run a single-model stage (seed 0) with a checkpoint in the middle of epoch 2, in the
lr-rewind run the batched computation of both seeds with a checkpoint in its batch folder. Resuming
them must finish every stage with the stage ids and the final metrics that code computed uninterrupted
(legacy-store-expected.json), the interrupted stages continuing from their checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sparsedd.cli import main
from sparsedd.experiments.distance import learning_distance
from sparsedd.results import load

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "legacy-store-expected.json").read_text())
METRICS = ("sparsity", "test_acc", "test_acc_best", "train_acc_noisy", "train_acc_clean", "memorized")
# written into the checkpoints' history of epoch 1 (a loss no real epoch has): the resumed stages' epoch 1
# rows carry it only if they continued from the checkpoint instead of training again from the start
SENTINEL = 1234.5


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "legacy-store"
    shutil.copytree(FIXTURES / "legacy-store", root)
    return root


def cli_json(capsys, *argv: str):
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def check_levels(shown: list[dict], expected: list[dict], below: int | None = None, root: Path | None = None) -> None:
    """The recorded metrics; the distance as the rule in force computes it from the stored weights (the
    fixture's were measured against the unmasked init, and are corrected when the store is opened)."""
    want = {(r["seed"], r["level"]): r for r in expected if below is None or r["level"] < below}
    got = {(r["seed"], r["level"]): r for r in shown}
    assert got.keys() == want.keys()
    for key, row in want.items():
        for m in METRICS:
            assert got[key][m] == pytest.approx(row[m], abs=1e-6, rel=0), (key, m)
        if root is not None:
            dense = want[(key[0], 0)]["stage_id"]
            final = torch.load(root / "stages" / row["stage_id"] / "final.pt", weights_only=True)
            init = torch.load(root / "stages" / dense / "init.pt", weights_only=True)["model"]
            right = learning_distance(final["model"], init, final.get("mask"))
            assert got[key]["distance"] == pytest.approx(right, abs=1e-9), key
            if key[1] == 0:  # nothing pruned: the old rule's value
                assert got[key]["distance"] == pytest.approx(row["distance"], abs=1e-6)


def mark_checkpoint(path: Path, batched: bool) -> None:
    state = torch.load(path, weights_only=True)
    histories = state["history"] if batched else [state["history"]]
    for history in histories:
        assert [h["epoch"] for h in history] == [1]  # interrupted in epoch 2
        history[0]["train_loss_running"] = SENTINEL
    torch.save(state, path)


def test_legacy_store_is_read_and_resumed(store, capsys):
    runs = EXPECTED["runs"]
    root = ["--root", str(store)]

    # read: both runs partial, levels 0 and 1 done, with the recorded metrics
    listed = {r["run"]: r for r in cli_json(capsys, "ls", "--format", "json", *root)}
    assert listed.keys() == {r["run_id"] for r in runs}
    for run in runs:
        row = listed[run["run_id"]]
        assert (row["status"], row["levels_done"], row["levels"], row["seeds"]) == ("partial", 2, 3, 2)
        shown = cli_json(capsys, "show", run["run_id"], "--format", "json", *root)
        assert shown["run"] == run["run_id"]
        check_levels(shown["levels"], run["levels"], below=2, root=store)

    # the interrupted stages' checkpoints are there; mark their history to see that they are resumed
    for run in runs:
        ckpt = store / run["interrupted"]["checkpoint"]
        assert ckpt.is_file()
        mark_checkpoint(ckpt, run["interrupted"]["kind"] == "batched")

    # resume: the same command lines complete every run
    for run in runs:
        capsys.readouterr()
        assert main(["run", *run["args"], *root, "--no-progress"]) == 0, capsys.readouterr()

    listed = {r["run"]: r for r in cli_json(capsys, "ls", "--format", "json", *root)}
    results = load(store)
    for run in runs:
        row = listed[run["run_id"]]
        assert (row["status"], row["levels_done"]) == ("complete", 3)
        shown = cli_json(capsys, "show", run["run_id"], "--format", "json", *root)
        check_levels(shown["levels"], run["levels"], root=store)

        # the pinned stage ids, every stage done
        levels = results.levels[results.levels["run_id"] == run["run_id"]]
        got = {(int(r["seed"]), int(r["level"])): r["stage_id"] for _, r in levels.iterrows()}
        assert got == {(r["seed"], r["level"]): r["stage_id"] for r in run["levels"]}
        for sid in got.values():
            assert (store / "stages" / sid / "done.json").is_file()
            assert (store / "stages" / sid / "final.pt").is_file()
            assert not (store / "stages" / sid / "checkpoint.pt").exists()
        assert not (store / run["interrupted"]["checkpoint"]).exists()

        # every stage has its three epochs; the interrupted ones kept epoch 1 from their checkpoint
        interrupted = run["interrupted"]
        resumed = set(interrupted["stage_ids"] if interrupted["kind"] == "batched" else [interrupted["stage_id"]])
        epochs = results.epochs[results.epochs["run_id"] == run["run_id"]]
        for (seed, level), sid in got.items():
            rows = epochs[(epochs["seed"] == seed) & (epochs["level"] == level)]
            assert list(rows["epoch"]) == [1, 2, 3], (seed, level)
            marked = list(rows["train_loss_running"] == SENTINEL)
            assert marked == ([True, False, False] if sid in resumed else [False] * 3), (seed, level, sid)
