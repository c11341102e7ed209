"""A level whose last epoch is unstable (its loss finite, so not diverged) is flagged in its metrics and
said by `sparsedd run` and `show`: evaluated far worse than it trained (batch-norm statistics, as
mnist-conv-quick's seed 3 level 9), or a training loss that blew up late."""

import math

import torch

from sparsedd.cli import main
from sparsedd.store import Store
from sparsedd.store.files import write_json
from sparsedd.training import loop
from sparsedd.training.loop import unstable_end


def rows(running, evaluated=None):
    evaluated = evaluated or [math.nan] * len(running)
    return [{"epoch": i + 1, "train_loss_running": r, **({"train_loss": e} if not math.isnan(e) else {})}
            for i, (r, e) in enumerate(zip(running, evaluated))]


def test_ordinary_collapsed_and_diverged_histories_are_not_flagged():
    assert unstable_end(rows([2.3, 1.2, 0.4, 0.05, 0.08])) is None  # noisy near its best, under the floor
    assert unstable_end(rows([2.31, 2.30, 2.30, 2.31])) is None  # a collapsed level: high all along
    assert unstable_end(rows([2.3, math.nan])) is None  # diverged: said as such elsewhere
    assert unstable_end(rows([1.5, 1.4], [1.6, 1.45])) is None
    assert unstable_end([]) is None


def test_an_evaluation_far_worse_than_training_is_flagged():
    # mnist-conv-quick, seed 3 level 9: 1.39 while training, 22.1 evaluated in the last epoch
    found = unstable_end(rows([1.8, 1.5, 1.387], [math.nan, 1.396, 22.07]))
    assert found == {"kind": "evaluation", "epoch": 3, "train_loss": 22.07, "train_loss_running": 1.387}
    # a spike in an earlier epoch that the network recovers from is not its end
    assert unstable_end(rows([1.8, 1.5, 1.37], [math.nan, 18.6, 1.37])) is None


def test_a_late_blow_up_of_the_training_loss_is_flagged():
    found = unstable_end(rows([2.3, 0.6, 0.3, 4.2]))
    assert found == {"kind": "training", "epoch": 4, "train_loss_running": 4.2, "best_train_loss_running": 0.3,
                     "best_epoch": 3}


def test_show_says_which_levels_ended_unstable(tmp_path, tiny_sets, capsys):
    root = tmp_path / "root"
    sets = [x for s in tiny_sets for x in ("--set", s)]
    assert main(["run", "--root", str(root), "--no-progress", *sets]) == 0
    capsys.readouterr()
    store = Store(root)
    [run_id] = store.index.run_ids()
    stages = store.index.run_stages(run_id)
    assert all("unstable" not in store.done_info(sid)["metrics"] for sid in stages.values())
    assert main(["show", run_id, "--root", str(root)]) == 0
    assert "sparsedd: note" not in capsys.readouterr().err

    # level 1 as mnist-conv-quick's seed 3 level 9 was: evaluated far worse than it trained at its end
    sid = stages[(0, 1)]
    done = store.done_info(sid)
    done["history"][-1].update(train_loss=22.07, train_loss_running=1.387)
    write_json(store.stage_dir(sid) / "done.json", done)
    assert main(["show", run_id, "--root", str(root)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsedd: note: seed 0 level 1: it evaluates far worse than it "
                                               "trained in its last epoch (training loss 22.1 evaluated, 1.39 "
                                               "while training;"), err


def test_training_records_what_unstable_end_finds(monkeypatch):
    from sparsedd.config import TrainConfig
    from sparsedd.models.mlp import MLP
    from sparsedd.training import TrainData, train

    g = torch.Generator().manual_seed(0)
    data = TrainData.clean(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g), 16)
    model = MLP(8, (16,), 3)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=16, epochs=2, eval_every=1)
    seen = []
    monkeypatch.setattr(loop, "unstable_end", lambda h: seen.append(len(h)) or {"kind": "training", "epoch": 2})
    result = train(model, data, cfg, {}, order_key=(0, "t"))
    assert seen == [2] and result.final["unstable"] == {"kind": "training", "epoch": 2}
