"""The Python API: the same runs, results, analyses and one-line errors as the command line."""

import json

import pytest

import sparsedd
from sparsedd.cli import main
from sparsedd.errors import SparseddError

OVERRIDES = {"data.num_train": 240, "data.num_test": 120, "model.hidden": [32, 32], "train.epochs": 2,
             "train.batch_size": 32, "prune.levels": 2, "data.noise": 0.2}


def test_run_equals_the_cli_and_returns_its_results(tmp_path, capsys):
    res = sparsedd.run("mnist1d-quick", overrides=OVERRIDES, seeds=2, root=tmp_path / "api", device="cpu")
    assert len(res.runs) == 1 and sorted(res.levels["seed"].unique()) == [0, 1]
    assert sorted(res.levels["level"].unique()) == [0, 1, 2] and len(res.epochs) == 2 * 3 * 2
    sets = [f"--set={k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in OVERRIDES.items()]
    assert main(["run", "--preset", "mnist1d-quick", *sets, "--seeds", "2", "--root", str(tmp_path / "cli"),
                 "--device", "cpu", "--no-progress"]) == 0
    cli = sparsedd.load(tmp_path / "cli")
    assert cli.runs["run_id"].tolist() == [res.run_id]  # the same configuration, so the same id
    assert cli.levels["test_acc"].tolist() == res.levels["test_acc"].tolist()
    # a second call finds everything done
    again = sparsedd.run("mnist1d-quick", overrides=OVERRIDES, seeds=2, root=tmp_path / "api", device="cpu")
    assert again.levels["test_acc"].tolist() == res.levels["test_acc"].tolist()

    table = sparsedd.analyze(res.run_id[:6], "phases", root=tmp_path / "api", settings={"tol": 0.02})
    assert set(table["seed"].astype(str)) >= {"0", "1", "mean"}
    dist = sparsedd.analyze(res.run_id, "distance", root=tmp_path / "api")
    assert dist["seed"].tolist() == [0, 1, "mean"]
    capsys.readouterr()
    settings = {"subsample": 32, "iters": 3}
    quiet = sparsedd.analyze(res.run_id, "sharpness", root=tmp_path / "api", settings=settings, levels=[1])
    assert capsys.readouterr().err == ""  # no progress unless asked
    recorded = lambda: [list(r) for r in sparsedd.load(tmp_path / "api").analyses["result"]]  # noqa: E731
    computed = recorded()  # as the report reads them: in the index
    said = sparsedd.analyze(res.run_id, "sharpness", root=tmp_path / "api", settings=settings, levels=[1], progress=True)
    assert recorded() == computed  # the same fields in the same order, computed or read back
    assert capsys.readouterr().err.splitlines() == ["sparsedd: sharpness: seed 0 level 1", "sparsedd: sharpness: seed 1 level 1"]
    assert said.equals(quiet)  # the second call read what the first computed


@pytest.mark.parametrize("call, message", [
    (lambda r: sparsedd.run("nope", root=r), "unknown preset 'nope'"),
    (lambda r: sparsedd.run(overrides={"train.lr": -1}, root=r), "train.lr must be > 0"),
    (lambda r: sparsedd.run(overrides={"train.nope": 1}, root=r), "unknown config key 'train.nope'"),
    (lambda r: sparsedd.run(root=r, batch="sometimes"), "--batch must be one of"),
    (lambda r: sparsedd.run(root=r, colour="red"), "execution options are"),
    (lambda r: sparsedd.analyze("abc", "distance", root=r), "no run 'abc'"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, call, message):
    with pytest.raises(SparseddError, match=message) as e:
        call(tmp_path / "root")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "root").exists()


def test_unknown_analysis_is_rejected_before_the_run_is_looked_up(tmp_path):
    with pytest.raises(SparseddError, match="unknown analysis 'nope'"):
        sparsedd.analyze("abc", "nope", root=tmp_path)


def test_a_run_and_its_analyses_leave_the_callers_global_rng_alone(tmp_path, monkeypatch):
    """Every draw of sparsedd is from a keyed generator of its own; torch's layers draw their default init from the
    global one, which is the caller's program's (found by review: building a model advanced it)."""
    import torch

    monkeypatch.setenv("SPARSEDD_CACHE", str(tmp_path / "cache"))  # the execution choices measured here too
    torch.manual_seed(123)
    before = torch.random.get_rng_state().clone()
    res = sparsedd.run("mnist1d-quick", overrides=OVERRIDES, seeds=2, root=tmp_path, device="cpu")
    sparsedd.analyze(res.run_id, "reinit", root=tmp_path, levels=[1])
    assert torch.equal(torch.random.get_rng_state(), before)
