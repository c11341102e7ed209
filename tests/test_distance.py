"""Learning distance over parameters only (batch-norm statistics are not weights), and the one-time
correction of stores that recorded it over the whole state."""

import json
import math

import pytest
import torch

from sparsedd.cli import main
from sparsedd.config import ModelConfig
from sparsedd.experiments.distance import BUFFERS, learning_distance
from sparsedd.store.migrations import CORRECTION
from sparsedd.models import MODELS, build_model
from sparsedd.store import Store


def old_distance(state, init):
    """What earlier versions recorded: the whole state_dict, batch-norm buffers included."""
    return math.sqrt(sum(float(((state[k].double() - init[k].double()) ** 2).sum()) for k in init))


def test_batch_norm_statistics_that_move_without_the_weights_give_distance_zero():
    model = build_model(ModelConfig("resnet18", width=4), (1, 12, 12), 10, seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        for _ in range(50):  # forward passes in train mode: running statistics and step counters move
            model(torch.randn(8, 1, 12, 12))
    state = model.state_dict()
    assert int(state["bn1.num_batches_tracked"]) == 50 and old_distance(state, init) > 50
    assert learning_distance(state, init) == 0.0
    with torch.no_grad():
        model.fc.weight[0, 0] += 3.0
        model.fc.bias[1] -= 4.0
    assert learning_distance(model.state_dict(), init) == pytest.approx(5.0)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_buffer_of_every_model_is_a_batch_norm_statistic(name):
    shape = (1, 28, 28) if name in ("lenet-300-100", "mlp", "vit") else (3, 16, 16)  # vit: 7x7 patches
    cfg = ModelConfig(name) if name in ("lenet-300-100", "mlp") else ModelConfig(name, width=4)
    model = build_model(cfg, shape, 10, seed=0)
    buffers = set(model.state_dict()) - {n for n, _ in model.named_parameters()}
    assert all(b.endswith(BUFFERS) for b in buffers)


TINY_CONV = ["--seeds", "1", "--set", "data.num_train=64", "--set", "data.num_test=32", "--set", "model.name=resnet18",
             "--set", "model.width=4", "--set", "train.epochs=2", "--set", "train.batch_size=16",
             "--set", "prune.levels=1", "--set", "data.augment=none"]


def test_a_store_with_the_old_distances_is_corrected_once(tmp_path, shared_mnist, capsys):
    root = tmp_path / "runs"
    args = ["run", "--preset", "paper-mnist-lenet", "--data-dir", str(shared_mnist), "--root", str(root), "--no-progress"]
    assert main(args + TINY_CONV) == 0
    store = Store(root)
    run_id = store.index.run_ids()[0]
    stages = store.index.run_stages(run_id)
    dense = stages[(0, 0)]
    right = {sid: store.done_info(sid)["metrics"]["distance"] for sid in stages.values()}
    # make the store look as an earlier version left it: distances over the whole state, no correction applied
    init = store.init(dense)
    for sid in stages.values():
        info = store.done_info(sid)
        info["metrics"]["distance"] = old_distance(store.final(sid)["model"], init)
        assert info["metrics"]["distance"] > right[sid] + 1  # the step counters alone
        store.finish_stage(sid, info)
        store.index.record_level(sid, info["metrics"]["level"], info["metrics"])
    (root / "migrations.json").unlink()
    capsys.readouterr()
    assert main(["show", run_id, "--format", "json", "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)["levels"]
    assert [r["distance"] for r in shown] == pytest.approx([right[stages[(0, lvl)]] for lvl in (0, 1)])
    assert all(store.done_info(sid)["metrics"]["distance"] == pytest.approx(right[sid]) for sid in stages.values())
    assert CORRECTION in store.migrated()


def test_pruned_entries_are_left_out_of_both_sides():
    init = {"w": torch.tensor([[3.0, 4.0], [1.0, 2.0]]), "b": torch.tensor([1.0, 1.0])}
    mask = {"w": torch.tensor([[False, False], [True, True]])}
    state = {"w": torch.tensor([[0.0, 0.0], [1.0, 2.0]]), "b": torch.tensor([1.0, 1.0])}  # pruned entries are 0
    assert learning_distance(state, init, mask) == 0.0  # nothing the network has moved
    assert learning_distance(state, init) == pytest.approx(5.0)  # the old rule: the pruned init counted
    state["w"][1, 0] = 4.0
    state["b"][0] = 5.0
    assert learning_distance(state, init, mask) == pytest.approx(5.0)


STILL = ["--set", "train.lr=1e-12", "--set", "train.epochs=1", "--set", "prune.levels=3", "--set", "data.noise=0.2",
         "--set", "retrain.mode=weight-rewind", "--set", "retrain.rewind_iteration=0"]


@pytest.mark.parametrize("model", ["mlp", "vgg16", "resnet18"])
def test_a_network_that_learns_nothing_has_distance_zero_at_every_level(tmp_path, shared_mnist, model):
    """Trained at lr 1e-12 a network stays at its (masked) init: its distance is below 1e-6 however sparse."""
    root = tmp_path / "runs"
    sets = ["data.num_train=128", "data.num_test=64", "train.batch_size=32", "data.augment=none", f"model.name={model}"]
    if model != "mlp":
        sets += ["model.width=4", "model.bn_init=uniform", "model.bias_init=torch"]
    args = ["run", "--preset", "paper-mnist-lenet", "--data-dir", str(shared_mnist), "--root", str(root),
            "--no-progress", "--seeds", "1", *STILL, *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    store = Store(root)
    stages = store.index.run_stages(store.index.run_ids()[0])
    distances = [store.done_info(stages[(0, level)])["metrics"]["distance"] for level in range(4)]
    assert all(d < 1e-6 for d in distances), distances
    sparsity = store.done_info(stages[(0, 3)])["metrics"]["sparsity"]
    assert sparsity > 0.45  # three rounds of 20%: the old rule would have counted ~0.5 of the init's norm


def test_a_store_of_unmasked_distances_is_corrected_once_without_batch_norm(tmp_path, tiny_sets, capsys):
    """Distances recorded against the full init (every pruned weight counted) are recomputed from the saved
    weights and masks the first time a command opens the store; a second opening changes no file."""
    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in tiny_sets for a in ("--set", s)]]) == 0
    store = Store(root)
    run_id = store.index.run_ids()[0]
    stages = store.index.run_stages(run_id)
    right = {sid: store.done_info(sid)["metrics"]["distance"] for sid in stages.values()}
    init = store.init(stages[(0, 0)])
    for level in (1, 2):  # as the mask-less rule recorded them
        sid = stages[(0, level)]
        info = store.done_info(sid)
        info["metrics"]["distance"] = learning_distance(store.final(sid)["model"], init)
        assert info["metrics"]["distance"] > right[sid] + 0.1
        store.finish_stage(sid, info)
        store.index.record_level(sid, level, info["metrics"])
    (root / "migrations.json").unlink()
    store.mark_migrated("distance-over-parameters")  # the batch-norm fix only, as an earlier version left it
    capsys.readouterr()
    assert main(["show", run_id, "--format", "json", "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)["levels"]
    assert [r["distance"] for r in shown] == pytest.approx([right[stages[(0, lvl)]] for lvl in (0, 1, 2)])
    assert CORRECTION in store.migrated()
    before = {sid: (store.stage_dir(sid) / "done.json").stat().st_mtime_ns for sid in store.stage_ids()
              if store.is_done(sid)}
    (root / "migrations.json").unlink()
    fresh = Store(root)
    fresh.migrate()
    assert CORRECTION in fresh.migrated()
    assert before == {sid: (store.stage_dir(sid) / "done.json").stat().st_mtime_ns for sid in before}


def test_distance_from_the_start_weights_against_from_the_init(tmp_path, tiny_sets, capsys):
    """Reinit levels start from fresh weights: at lr 1e-12 they are far from the dense init but nowhere from
    where they started, which ``reference = start`` measures."""
    root = tmp_path / "runs"
    sets = [*tiny_sets, "retrain.mode=reinit", "train.lr=1e-12"]
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 0
    run_id = Store(root).index.run_ids()[0]
    tables, said = {}, {}
    for reference in ("init", "start"):
        capsys.readouterr()
        assert main(["analyze", run_id, "distance", "--set", f"reference={reference}", "--root", str(root),
                     "--format", "json"]) == 0
        out = capsys.readouterr()
        tables[reference], said[reference] = json.loads(out.out), out.err
    assert said["init"] == ""  # the recorded distances: nothing loaded, nothing to say
    assert [f"distance: seed 0 level {lv}" in said["start"] for lv in range(3)] == [True] * 3  # each level loaded
    by_init, by_start = tables["init"][0]["distances"], tables["start"][0]["distances"]
    assert len(by_init) == len(by_start) == 3
    assert by_init[0] < 1e-6 and all(d > 1.0 for d in by_init[1:])
    assert all(d < 1e-6 for d in by_start)


def test_a_store_is_migrated_when_first_used_whoever_opens_it(tmp_path, tiny_sets):
    """A new store is marked up to date by its first stage (never scanned); an old one is corrected by the
    first use of any Store on it, the results API included, and not by making the Store."""
    import sparsedd

    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *[a for s in tiny_sets for a in ("--set", s)]]) == 0
    assert CORRECTION in Store(root).migrated()  # marked when the first stage was made
    store = Store(root)
    stages = store.index.run_stages(store.index.run_ids()[0])
    sid = stages[(0, 1)]
    right = store.done_info(sid)["metrics"]["distance"]
    info = store.done_info(sid)
    info["metrics"]["distance"] = right + 1.0  # as an earlier rule recorded it
    store.finish_stage(sid, info)
    store.index.record_level(sid, 1, info["metrics"])
    (root / "migrations.json").unlink()
    Store(root)  # made, not used: nothing read, nothing corrected
    assert not (root / "migrations.json").exists()
    levels = sparsedd.load(root).levels
    assert levels.loc[levels["stage_id"] == sid, "distance"].item() == pytest.approx(right)
    assert store.done_info(sid)["metrics"]["distance"] == pytest.approx(right)
    assert CORRECTION in store.migrated()


def _make_stages(root: str, worker: int, rounds: int, barrier, errors) -> None:
    for k in range(rounds):
        barrier.wait()  # every process makes its first stage in the same new store at the same moment
        try:
            Store(f"{root}/{k}").begin_stage(f"{worker:08x}{k:08x}", {"kind": "test", "worker": worker})
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors.put(f"{type(e).__name__}: {e}")


def test_processes_making_one_store_at_once_agree_on_its_migrations(tmp_path):
    """Every writer of migrations.json holds one lock: two runs started together on an empty root once read
    each other's half-replaced file as damaged (found by the mnist-vit-quick evidence runs)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, errors, rounds = ctx.Barrier(4), ctx.Queue(), 15
    procs = [ctx.Process(target=_make_stages, args=(str(tmp_path), w, rounds, barrier, errors)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == [] and all(p.exitcode == 0 for p in procs)
    assert all(CORRECTION in Store(tmp_path / str(k)).migrated() for k in range(rounds))
