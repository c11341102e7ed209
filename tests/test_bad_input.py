"""Issue 13, point 4: bad input is one line on stderr, exit code 2, and nothing written; numbers are
bounded to what the machinery holds; paths are printed as given. Ends with a property-style test over
many random malformed configuration and sweep files."""

import os
import random
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import sparsedd
from sparsedd import config as config_mod
from sparsedd import config_load
from sparsedd.cli import main
from sparsedd.errors import SparseddError
from sparsedd.store import Store
from test_cli import snapshot


def sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A store holding one finished tiny run (so that "nothing written" compares against real files)."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("bad") / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *sets(TINY)]) == 0
    [run_id] = Store(root).index.run_ids()
    return root, run_id


@pytest.fixture
def never_runs(monkeypatch):
    """Bad input must stop before a run or sweep starts: reaching one fails the test at once (rather
    than after a full default run)."""
    import sparsedd.claims  # noqa: F401 (imported first: it binds run_sweep by name, and must keep the real one
    import sparsedd.experiments  # for the tests after this one in the process)
    import sparsedd.sweep

    def reached(*args, **kwargs):
        raise AssertionError("bad input was accepted")

    monkeypatch.setattr(sparsedd.experiments, "run", reached)
    monkeypatch.setattr(sparsedd.sweep, "run_sweep", reached)


def fails_in_one_line(args, capsys, root: Path, words: str) -> str:
    """Run the CLI in this process; it must exit 2 with one line naming ``words`` and leave ``root`` as it was."""
    before = snapshot(root)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("sparsedd: error: ") and "Traceback" not in err, err
    assert words in err, err
    assert "->" not in out, out  # nothing announced before the refusal ("run ID -> ROOT")
    assert snapshot(root) == before
    return err


def no_cuda() -> str:
    """A CUDA device this machine does not have."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


# --- each case of point 4


def test_non_utf8_config_and_sweep_files(finished, never_runs, tmp_path, capsys):
    root, _ = finished
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("# réglage\nseed = 1\n".encode("latin-1"))
    fails_in_one_line(["run", "--config", str(bad), "--root", str(root)], capsys, root, "is not UTF-8 text")
    fails_in_one_line(["sweep", str(bad), "--root", str(root)], capsys, root, "is not UTF-8 text")


def test_root_naming_a_file(finished, never_runs, tmp_path, capsys):
    root, run_id = finished
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["run", *sets(["train.epochs=1"])], ["ls"], ["show", run_id], ["sweep", "paper-mnist-noise"]):
        fails_in_one_line([*args, "--root", str(afile)], capsys, root, f"--root {afile} is a file, not a folder")
    fails_in_one_line(["run", "--root", str(afile / "below")], capsys, root, f"is inside {afile}, which is a file")
    with pytest.raises(SparseddError, match="is a file, not a folder"):
        sparsedd.run(root=afile)
    assert afile.read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_where_nothing_can_be_made_is_refused_first(finished, never_runs, capsys):
    """/proc admits every permission to root and no new file to anyone: the folder is tried, not its bits
    (found by audit: exit 1 with "what was finished is kept", for bench --out after the whole benchmark)."""
    root, run_id = finished
    where = "cannot be written (/proc"  # (": No such file" as root, " is not writable" otherwise)
    for args in (["run", *sets(["train.epochs=1"]), "--root", "/proc/x"], ["claims", "--seeds", "3", "--root", "/proc/x"],
                 ["sweep", "paper-mnist-noise", "--root", "/proc/x"], ["merge", str(root), "--root", "/proc/x"],
                 ["plot", run_id, "--root", str(root), "--out", "/proc/x.png"], ["bench", "--quick", "--out", "/proc/b.json"],
                 ["report", run_id, "--root", str(root), "--out", "/proc/rep"]):
        fails_in_one_line(args, capsys, root, where)


@pytest.mark.parametrize("device, words", [
    ("bogus", "--device 'bogus' is not a device"),
    ("meta", "sparsedd runs on cpu, cuda or mps, not meta"),
    (no_cuda(), "CUDA device"),
])
def test_device_checked_before_anything_is_written(finished, never_runs, tmp_path, capsys, device, words):
    root, run_id = finished
    fresh = tmp_path / "fresh"
    fails_in_one_line(["run", "--device", device, "--root", str(fresh)], capsys, root, words)
    fails_in_one_line(["analyze", run_id, "distance", "--device", device, "--root", str(root)], capsys, root, words)
    assert not fresh.exists()
    with pytest.raises(SparseddError, match=words.split("'")[0]):
        sparsedd.run(root=fresh, device=device)
    assert not fresh.exists()


def test_report_out_naming_a_file_or_an_unwritable_place(finished, tmp_path, capsys):
    root, run_id = finished
    afile = tmp_path / "afile"
    afile.write_text("x")
    fails_in_one_line(["report", run_id, "--root", str(root), "--out", str(afile)], capsys, root, "is a file, not a folder")
    if os.geteuid() != 0:  # permissions bind
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = locked / "report"
    else:  # root writes anywhere that is not a kernel file system
        unwritable = Path("/proc/sparsedd-report")
    fails_in_one_line(["report", run_id, "--root", str(root), "--out", str(unwritable)], capsys, root, "--out")
    assert not unwritable.exists()


def test_plot_out_with_a_suffix_matplotlib_cannot_write(finished, tmp_path, capsys):
    root, run_id = finished
    out = tmp_path / "curve.xyz"
    fails_in_one_line(["plot", run_id, "--root", str(root), "--out", str(out)], capsys, root, "cannot write .xyz")
    fails_in_one_line(["plot", run_id, "--root", str(root), "--out", str(tmp_path)], capsys, root, "cannot write")
    assert not out.exists()


def test_paths_with_brackets_are_printed_as_given(tmp_path, capsys):
    """'[bold]' and '[/b]' are rich markup: a path holding them printed a wrong path or raised MarkupError."""
    from conftest import TINY

    config = tmp_path / "c[" / "b]x.toml"  # the path holds '[/b]'
    config.parent.mkdir()
    config.write_text("[train]\nepochs = 1\n[prune]\nlevels = 0\n")
    root = tmp_path / "r[bold]y"
    assert main(["run", "--config", str(config), "--root", str(root), "--no-progress", *sets(TINY[:4])]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"({config}) -> {root}"), first


@pytest.mark.parametrize("item, words", [
    ("seed=99999999999999999999999", "seed must fit in 64 bits"),
    ("seed=4611686018427387905", "seed must be in [0, 2^62]"),
    ("train.batch_size=99999999999999999999", "train.batch_size must fit in 64 bits"),
    ("train.batch_size=2000000", "train.batch_size must be in [1, 1048576]"),
    ("train.epochs=99999999999999999999999", "train.epochs must fit in 64 bits"),
    ("train.epochs=1000000", "train.epochs must be in [1, 100000]"),
    ("train.lr=inf", "train.lr must be a finite number"),
    ("train.weight_decay=inf", "train.weight_decay must be a finite number"),
    ("retrain.finetune_lr=inf", "retrain.finetune_lr must be a finite number"),
    ("train.momentum=nan", "train.momentum must be a finite number"),
    ("data.num_train=1000000000", "data.num_train must be in [0, 10000000]"),
    ("model.hidden=[32,100000]", "model.hidden must be widths in [1, 65536]"),
    ("train.milestones=[1,99999999999999999999]", "train.milestones must fit in 64 bits"),
])
def test_numbers_are_bounded(finished, never_runs, capsys, item, words):
    root, _ = finished
    fails_in_one_line(["run", "--set", item, "--root", str(root)], capsys, root, words)


def test_execution_flags_are_bounded(finished, never_runs, capsys):
    root, _ = finished
    for flag, value in (("--threads", "99999999999"), ("--checkpoint-every", "nan"), ("--checkpoint-epoch", "inf")):
        fails_in_one_line(["run", flag, value, "--root", str(root)], capsys, root, f"argument {flag}")
    with pytest.raises(SparseddError, match="--threads must be in"):
        sparsedd.run(root=root, threads=10**12)


def test_analysis_settings_are_finite(finished, capsys):
    root, run_id = finished
    fails_in_one_line(["analyze", run_id, "landscape", "--set", "radius=nan", "--root", str(root)], capsys, root,
                      "landscape.radius must be a finite number")
    fails_in_one_line(["analyze", run_id, "landscape", "--set", "points=10000000", "--root", str(root)], capsys, root,
                      "landscape: points must be in [3, 100001]")
    with pytest.raises(SparseddError, match="radius must be a finite number"):
        sparsedd.analyze(run_id, "landscape", root=root, settings={"radius": float("inf")})


@pytest.mark.parametrize("args, words", [  # (found by audit: each printed a table of something else, exit 0)
    (["phases", "--levels", "1"], "phases measures the whole run, every level and seed; ask for no levels or seeds"),
    (["distance", "--seeds", "0"], "distance measures the whole run"),
    (["reinit", "--levels", "0"], "reinit measures pruned levels, and run"),  # (an empty table before)
    (["reinit", "--levels", "1,7"], "has no finished level 7 (its finished levels: 0, 1, 2)"),
    (["redense", "--seeds", "5"], "has no finished seed 5 (its finished seeds: 0)"),  # ("no finished level" before)
    (["phases", "--set", "tol=-1"], "phases: tol must be in [0, 1), a fraction of accuracy"),  # (a traceback)
    (["phases", "--set", "tol=5"], "phases: tol must be in [0, 1)"),
    (["sharpness", "--levels", "1,,2"], "--levels takes a comma-separated list of integers or 'all', got '1,,2'"),
])
def test_levels_and_seeds_an_analysis_cannot_take_are_refused(finished, capsys, args, words):
    root, run_id = finished
    fails_in_one_line(["analyze", run_id, *args, "--root", str(root)], capsys, root, words)
    if args[1] in ("--levels", "--seeds") and "," not in args[-1]:
        levels = [int(args[-1])] if args[1] == "--levels" else None
        seeds = [int(args[-1])] if args[1] == "--seeds" else None
        with pytest.raises(SparseddError, match=re.escape(words)):  # the API checks them too
            sparsedd.analyze(run_id, args[0], root=root, levels=levels, seeds=seeds)
    if args[0] == "distance":  # empty lists ask for nothing in particular: the whole run, as before
        assert len(sparsedd.analyze(run_id, "distance", root=root, levels=[], seeds=[])) == 2


def test_a_run_level_analysis_with_nothing_to_measure_says_so(tmp_path, capsys):
    from conftest import TINY

    root = tmp_path / "runs"
    assert main(["run", "--root", str(root), "--no-progress", *sets([*TINY, "prune.levels=0"])]) == 0
    [run_id] = Store(root).index.run_ids()
    fails_in_one_line(["analyze", run_id, "phases", "--root", str(root)], capsys, root,
                      "phases found nothing to measure in run")  # (an "Empty DataFrame" repr before)


def test_a_missing_run_config_is_read_from_the_index(finished, tmp_path, capsys):
    """runs/ID/config.json gone: show and analyze read the configuration the index holds (written with it)."""
    root, run_id = finished
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "runs" / run_id / "config.json").unlink()
    capsys.readouterr()
    assert main(["show", run_id, "--root", str(copy), "--format", "json"]) == 0
    assert '"num_train": 240' in capsys.readouterr().out
    assert main(["analyze", run_id, "distance", "--root", str(copy), "--no-progress"]) == 0
    (copy / "runs" / run_id / "config.json").write_text("{trunc")  # unreadable: the same
    assert main(["plot", run_id, "--root", str(copy), "--out", str(tmp_path / "c.png")]) == 0


@pytest.mark.parametrize("items, words", [
    (["model.hidden=[]", "model.name=lenet-300-100"], "lenet-300-100 expects 28x28 inputs"),
    (["model.hidden=[]", "model.name=resnet18"], "resnet18 expects images"),
    (["prune.layers=conv"], "prune.layers 'conv' does not apply to an MLP"),
])
def test_a_model_that_cannot_take_the_data_is_refused_before_the_run_is_registered(finished, tmp_path, capsys,
                                                                                   items, words):
    from conftest import TINY

    root, _ = finished
    fails_in_one_line(["run", "--no-progress", *sets(TINY + items), "--root", str(root)], capsys, root, words)
    sweep = tmp_path / "s.toml"  # a sweep is refused when it is read, before anything runs
    lines = "\n".join(f'"{k}" = {v if v.startswith("[") else repr(v)}' for k, v in (i.split("=") for i in items))
    sweep.write_text(f'preset = "mnist1d-quick"\n[base]\n{lines}\n[grid]\n"data.noise" = [0.1, 0.2]\n')
    fails_in_one_line(["sweep", str(sweep), "--root", str(root)], capsys, root, words)


@pytest.mark.parametrize("items, words", [  # (found by review: each ended in a traceback or a misleading error
    # after the run was registered)
    (["data.val_split=0.5", "retrain.mode=weight-rewind", "retrain.rewind_iteration=20"],  # 4 steps of 32 in 120
     "retrain.rewind_iteration 20 is past the end of dense training (12 iterations)"),  # (x 3 epochs; 24 on 240)
    (["data.val_split=0.001"], "data.val_split = 0.001 holds out 0 of the 240 training examples"),
    (["data.val_split=0.999"], "holds out 240 of the 240 training examples; choose a fraction that holds out"),
    (["data.noise_type=asymmetric"], "asymmetric label noise is defined for cifar10, cifar100, mnist only"),
])
def test_counts_and_noise_the_data_cannot_give_are_refused_before_the_run_is_registered(finished, never_runs, tmp_path,
                                                                                        capsys, items, words):
    from conftest import TINY

    root, _ = finished
    fails_in_one_line(["run", "--no-progress", *sets(TINY + items), "--root", str(root)], capsys, root, words)
    sweep = tmp_path / "s.toml"
    lines = "\n".join(f'"{k}" = {v if v[0] in "[0123456789" else repr(v)}' for k, v in (i.split("=") for i in TINY + items))
    sweep.write_text(f'preset = "mnist1d-quick"\n[base]\n{lines}\n[grid]\n"data.noise_seed" = [1, 2]\n')
    fails_in_one_line(["sweep", str(sweep), "--root", str(root)], capsys, root, words)


def test_a_data_dir_that_cannot_be_one_is_refused_and_a_new_one_is_made(finished, tmp_path, capsys):
    from conftest import TINY

    root, _ = finished
    (tmp_path / "afile").write_text("x")
    fails_in_one_line(["run", "--no-progress", *sets(TINY), "--data-dir", str(tmp_path / "afile" / "data"),
                       "--root", str(root)], capsys, root, f"is inside {tmp_path / 'afile'}, which is a file")
    assert main(["run", "--no-progress", *sets(TINY), "--data-dir", str(tmp_path / "new"), "--root", str(root)]) == 0


def test_data_that_cannot_be_had_is_refused_before_the_run_is_announced(finished, tmp_path, capsys, shared_mnist):
    """(found by audit) "run ID -> ROOT" came before this refusal."""
    from conftest import TINY

    root, _ = finished
    fails_in_one_line(["run", "--no-progress", *sets(TINY + ["data.name=mnist", "data.num_train=100000"]),
                       "--data-dir", str(shared_mnist), "--root", str(root)], capsys, root,
                      "data.num_train = 100000 but mnist has only 60000")


# --- property-style: many random malformed files

BAD_VALUES = {  # TOML literals that no field of this type accepts (-1 is out of every numeric field's range)
    int: ["-1", "nan", "inf", "1.5", '"abc"', "[1]", "{ a = 1 }", "true", "9223372036854775808", "1e30",
          "-9223372036854775809", "1979-05-27", '"99999999999999999999999"'],
    float: ["-1", "nan", "inf", "-inf", '"abc"', "[0.1]", "{ a = 1 }", "true", "1e999", "1979-05-27",
            "99999999999999999999999999999999999999999999999999" * 8],
    str: ['"nope"', '""', "[1]", "{ a = 1 }", "true", "1.5", "nan", '"<b>[bold]"'],
    bool: ['"maybe"', "2", "1.5", "[true]", "{ a = 1 }", "nan"],
    tuple: ["[0]", "[-1]", "[nan]", '"x"', "[[1]]", "[9223372036854775808]", "5", "{ a = 1 }", "[1.5]", "[inf]"],
}
BROKEN = ["[train\n", "x = \n", "= 1\n", 'a = "unterminated\n', "seed = 1\nseed = 2\n", "[[[\n",
          "a = " + "[" * 3000 + "]" * 3000 + "\n", "nope = 1\n", "[train]\nlrr = 0.1\n", "train = 5\n",
          "[nosuch]\nx = 1\n", "train.lr.x = 1\n"]
VALID = ["train.epochs = 3", "train.batch_size = 32", "data.num_train = 240", "model.hidden = [32, 32]",
         "data.noise = 0.1", "prune.levels = 2", "seed = 3", 'retrain.mode = "finetune"']


def field_types() -> dict[str, type]:
    hints = typing.get_type_hints(config_mod.RunConfig)
    out = {}
    for key in config_load.valid_keys():
        sec, _, name = key.rpartition(".")
        typ = typing.get_type_hints(hints[sec])[name] if sec else hints[key]
        out[key] = tuple if typing.get_origin(typ) is tuple else typ
    return out


def malformed_config(rng: random.Random) -> bytes:
    """Some valid lines and one malformed piece: a value the key's type never accepts, broken TOML, an
    unknown key, or bytes that are not UTF-8."""
    lines = rng.sample(VALID, rng.randint(0, 4))
    kind = rng.random()
    if kind < 0.7:
        key, typ = rng.choice(sorted(field_types().items()))
        bad = f"{key} = {rng.choice(BAD_VALUES[typ])}"
    elif kind < 0.9:
        bad = rng.choice(BROKEN).rstrip("\n")
    else:
        bad = "seed = 1 # \xff\xfe"
    lines.insert(rng.randint(0, len(lines)), bad)
    encoding = "latin-1" if "\xff" in bad else "utf-8"
    return ("\n".join(lines) + "\n").encode(encoding)


def malformed_sweep(rng: random.Random) -> bytes:
    """A sweep file with one fault: in its top keys, its axes, a value of a run, or its bytes."""
    top = {"preset": '"mnist1d-quick"', "seeds": "1", "retries": "1"}
    base = {'"train.epochs"': "3", '"data.num_train"': "240"}
    grid = {'"data.noise"': "[0.1, 0.2]"}
    zipped: dict[str, str] = {}
    fault = rng.randrange(12)
    if fault == 0:
        top["nope"] = "1"
    elif fault == 1:
        top["seeds"] = rng.choice(["0", "-1", '"3"', "1.5", "true", "2000", "99999999999999999999"])
    elif fault == 2:
        top["retries"] = rng.choice(["-1", "101", '"1"', "true", "1.5", "99999999999999999999"])
    elif fault == 3:
        top["preset"] = rng.choice(["5", '"nope"', "[1]", "{ a = 1 }"])
    elif fault == 4:
        grid['"data.noise"'] = rng.choice(["0.2", "[]", '"x"', "{ a = 1 }", "[0.1, 0.1]"])
    elif fault == 5:
        zipped = {'"train.lr"': "[0.1, 0.2]", '"train.batch_size"': "[32]"}
    elif fault == 6:
        zipped = {'"data.noise"': "[0.3]"}  # both a grid and a zip axis
    elif fault in (7, 8):  # a value no run accepts: the one value of a grid axis, or in the base
        key, typ = rng.choice(sorted(field_types().items()))
        bad = rng.choice(BAD_VALUES[typ])
        if fault == 7:
            grid[f'"{key}"'] = f"[{bad}]"
        else:
            base[f'"{key}"'] = bad
    elif fault == 9:  # 10^5 runs
        grid.update({f'"{k}"': str(list(range(1, 11))) for k in ("train.epochs", "train.batch_size", "seed",
                                                               "data.noise_seed", "prune.levels")})
        base.pop('"train.epochs"')
    elif fault == 10:
        return rng.choice(BROKEN).encode()
    else:
        return '[base]\n"seed" = 1 # caf\xe9\n'.encode("latin-1")
    text = "".join(f"{k} = {v}\n" for k, v in top.items())
    for name, table in (("base", base), ("grid", grid), ("zip", zipped)):
        if table:
            text += f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
    return text.encode()


def test_random_malformed_configs_and_sweeps(finished, never_runs, tmp_path, capsys):
    """Exit 2, one line on stderr, no traceback, store unchanged, for every one of 240 files (160 configs,
    80 sweeps); nothing may reach the point of running (that fails the test, naming the file)."""
    root, _ = finished
    rng = random.Random(int(os.environ.get("SPARSEDD_PROPERTY_SEED", "13")))
    files = []
    for i in range(240):
        sweep = i % 3 == 2
        f = tmp_path / f"case{i}.toml"
        f.write_bytes(malformed_sweep(rng) if sweep else malformed_config(rng))
        args = ["sweep", str(f)] if sweep else ["run", "--config", str(f)]
        try:
            fails_in_one_line([*args, "--root", str(root), "--no-progress"], capsys, root, "")
        except AssertionError as e:
            raise AssertionError(f"{f.read_bytes()!r}: {e}") from None
        files.append(args)
    # as real processes too: a config and a sweep (each process imports torch: seconds)
    for args in (files[0], files[2]):
        res = subprocess.run([sys.executable, "-m", "sparsedd.cli", *args, "--root", str(root)], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr


def test_the_model_check_refuses_misfits_only():
    """A model built on the meta device: a real shape mismatch is refused; a forward that reads values
    (which meta tensors cannot) is not taken for one."""
    from sparsedd.config import ModelConfig
    from sparsedd.models import MLP, MODELS, check_takes

    class Reads(MLP):
        def forward(self, x):
            assert x.sum().item() == x.sum().item()  # data-dependent: fails on meta tensors
            return super().forward(x)

    class Wrong(MLP):  # its builder checks nothing, its first layer expects 41 features
        pass

    MODELS.register("reads", lambda cfg, shape, classes: Reads(40, (8,), classes))
    MODELS.register("wrong", lambda cfg, shape, classes: Wrong(41, (8,), classes))
    try:
        check_takes(ModelConfig("reads"), (40,), 10, "default")
        with pytest.raises(SparseddError, match=r"wrong cannot take inputs of shape \[40\]"):
            check_takes(ModelConfig("wrong"), (40,), 10, "default")
    finally:
        MODELS.unregister("reads")
        MODELS.unregister("wrong")


@pytest.mark.parametrize("value", ["[[1]]", "[1,", "]1[", "[1,,2", "[32", "[1, 2,]", "(1, 2]"])
def test_malformed_lists_are_refused(value):
    """A list given as text must be one: unbalanced or nested brackets and empty items were read as if fine
    ('[1,' as [1]) before (issue 24)."""

    with pytest.raises(SparseddError, match="must be a list of values like"):
        config_load.load(sets=[f"train.milestones={value}", "train.schedule=multistep"])
    with pytest.raises(SparseddError, match="must be a list of values like"):
        config_load.load(sets=[f"model.hidden={value}"])
    assert config_load.load(sets=["model.hidden=[32, 16]"]).model.hidden == (32, 16)
    assert config_load.load(sets=["model.hidden=(8)"]).model.hidden == (8,)


@pytest.mark.parametrize("where", ["file", "sweep", "api"])
def test_a_table_nested_a_thousand_deep_is_one_line(tmp_path, capsys, where):
    import sparsedd
    from sparsedd.cli import main

    deep = "[" + ".".join(["a"] * 1000) + "]\nv = 1\n"
    if where == "api":
        f = tmp_path / "deep.toml"
        f.write_text(deep)
        with pytest.raises(SparseddError, match="unknown config key"):
            sparsedd.run(config=f, root=tmp_path / "runs")
        return
    f = tmp_path / "deep.toml"
    f.write_text(deep if where == "file" else 'preset = "mnist1d-quick"\n' + deep.replace("[a.", "[base.a.", 1))
    cmd = ["run", "--config", str(f)] if where == "file" else ["sweep", str(f)]
    assert main([*cmd, "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "RecursionError" not in err
    assert not (tmp_path / "runs").exists()


def test_the_python_api_checks_as_the_command_line_does(tmp_path):
    import sparsedd

    with pytest.raises(SparseddError, match="train.epochs must be an integer, got 2.0"):
        sparsedd.run("mnist1d-quick", overrides={"train.epochs": 2.0}, root=tmp_path / "runs")
    with pytest.raises(SparseddError, match="root must be a path"):
        sparsedd.run("mnist1d-quick", root=5)
    f = tmp_path / "a-file"
    f.write_text("not a store")
    with pytest.raises(SparseddError, match="is a file, not a folder"):
        sparsedd.load(f)
    assert not (tmp_path / "runs").exists()
