"""Command line: argument parsing only; the work is done by the library functions it calls.

(One module over 300 lines: every command's flags beside its handler, so `--help` and what a flag
does read together; the shared flags are declared once, in :func:`_flags`.)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from . import config as config_mod

from . import config_load
from .errors import SparseddError


TERMINATED = "sparsedd: terminated (SIGTERM); run the same command again to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, SLURM, container runtimes), handled as Ctrl-C is: a run keeps its
    checkpoints and is marked partial, a sweep stops its workers first; exit code 143."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM raises :class:`Terminated` in the block; yields the signals received, so that the exit code is
    143 even where a library re-raised the interrupt as a plain KeyboardInterrupt (Ray does, from a wait)."""
    received: list[int] = []

    def terminated(signum, frame):
        received.append(signum)
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield received
        return
    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, before)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        print(f"sparsedd: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _integer(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (argparse's own int takes 10^30 threads)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {config_mod.brief(text)}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {config_mod.brief(value)}")
        return value
    return parse


def _amount(text: str) -> float:
    """An argparse type: a finite number >= 0 (argparse's own float takes nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {config_mod.brief(text)}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _store(args, writable: bool = False):
    """The results store of ``--root``, once it is known to be a folder (writable, for the commands that write)."""
    from .inputs import folder
    from .store import Store, default_root

    return Store(folder(args.root if args.root is not None else default_root(), root_source(args), writable=writable))


def root_source(args) -> str:
    """Where the store's folder came from, as errors should name it: --root, SPARSEDD_ROOT or the default."""
    if getattr(args, "root", None) is not None:
        return "--root"
    return "SPARSEDD_ROOT" if os.environ.get("SPARSEDD_ROOT") else "the default store (give --root or SPARSEDD_ROOT)"


def _options(args, cfg=None, here: bool = True, **changes):
    """The one execution-options object of a command, from the flags it has; torch's threads set from it.
    ``here``: the device is this machine's (not a Ray cluster's), so it is checked against its devices."""
    from .options import ExecOptions, resolve_device

    flags = {"data_dir": "data_dir", "threads": "threads", "sparse": "sparse", "channels_last": "channels_last",
             "compile": "compile", "capture": "capture", "checkpoint_every_s": "checkpoint_every", "checkpoint_epoch_s": "checkpoint_epoch"}
    values = {field: getattr(args, flag) for field, flag in flags.items() if hasattr(args, flag)}
    if here and values.get("data_dir") is not None:  # a folder, or one that can be made (downloads go there)
        from .inputs import folder

        folder(values["data_dir"], "--data-dir", writable=not Path(values["data_dir"]).expanduser().is_dir())
    values["device"] = resolve_device(getattr(args, "device", "auto"), here=here)
    values["progress"] = not getattr(args, "no_progress", False)
    if hasattr(args, "batch"):
        values["batch"] = "off" if args.no_batch else args.batch
    options = ExecOptions(**{**values, **changes})
    options.apply_threads(cfg.model.name if cfg is not None else None)
    return options


def cmd_run(args) -> int:
    from . import terminal

    from .distributed import from_env
    from .experiments import run
    from .experiments.scheduler import check_declared_fit
    from .report.tables import curve_table
    from .results import run_curve
    from .store import Store

    cfg = config_load.load(args.preset, args.config, args.set, args.seeds)
    preset = args.preset if args.preset or args.config else config_load.DEFAULT_PRESET
    options = _options(args, cfg)
    root = _store(args, writable=True).root
    dist, device = from_env(options.device)
    options = options.replace(dist=dist, device=device, progress=options.progress and dist.main)
    store = Store(root, readonly=not dist.main)
    check_declared_fit(cfg)
    console = terminal.console(quiet=not dist.main)
    line = f"run {cfg.run_id} ({preset or args.config}) -> {store.root}"
    line += f" on {dist.world} processes" if dist.active else ""
    run_id = run(cfg, store, preset=preset, options=options,  # paths as given: no markup, no wrapping
                 started=lambda: console.print(line, markup=False, highlight=False, soft_wrap=True))
    if dist.main:
        curve = run_curve(store, run_id)
        console.print(curve_table(run_id, curve))
        console.print(f"run id: {run_id}")
        _note_troubles(store, run_id, curve)
    return 0


def _note_troubles(store, run_id: str, curve, hint: bool = True) -> None:
    """One line on stderr where the run diverged (its status says so too; the exit code stays 0: a
    diverged run is a result, e.g. of a learning rate too high), and one per level whose training blew
    up or evaluated far worse than it trained at its end (:func:`sparsedd.training.loop.unstable_end`), up to a few."""
    row = next((r for r in store.index.run_rows() if r["run_id"] == run_id), None)
    if row is not None and row["status"] == "diverged":
        print(f"sparsedd: note: run {run_id} diverged: {row['error']}", file=sys.stderr)
    from .analysis.curves import phases_without_unstable

    flagged = curve[curve["unstable"] != ""]  # the index says which levels; their histories say how
    notes = [_unstable_note(level, found) for level in flagged.itertuples()
             if (found := _unstable_end_of(store, level.stage_id))]
    for note in notes[:5]:
        print(note, file=sys.stderr)
    if len(notes) > 5:
        print(f"sparsedd: note: {len(notes) - 5} more levels of run {run_id} ended unstable", file=sys.stderr)
    if notes and hint:  # (not where the means already leave them out)
        print(f"sparsedd: note: `{phases_without_unstable(run_id, store.root)}` finds the phases without "
              f"{'it' if len(notes) == 1 else 'them'}; show, plot and report take --unstable drop", file=sys.stderr)


def _unstable_end_of(store, stage_id: str) -> dict | None:
    """How the stage's last epoch is unstable, from its history (stages trained before the flag existed too)."""
    from .store.files import DamagedFile
    from .training.loop import unstable_end

    try:
        return unstable_end(store.done_info(stage_id).get("history", [])) if store.is_done(stage_id) else None
    except (OSError, DamagedFile, ValueError):  # what cannot be read is doctor's to report, not show's
        return None


def _unstable_note(level, found: dict) -> str:
    at = f"seed {level.seed} level {level.level}"
    acc = f"{level.test_acc * 100:.1f}% test, {level.test_acc_best * 100:.1f}% best"
    if found["kind"] == "evaluation":
        what = (f"it evaluates far worse than it trained in its last epoch (training loss {found['train_loss']:.3g} "
                f"evaluated, {found['train_loss_running']:.3g} while training; {acc}): in evaluation mode, e.g. "
                "batch norm on population statistics, where training normalized each batch by its own")
    else:
        what = (f"its training loss blew up late ({found['train_loss_running']:.3g} in the last epoch, "
                f"{found['best_train_loss_running']:.3g} at epoch {found['best_epoch']}; {acc})")
    return f"sparsedd: note: {at}: {what}; its final accuracies are not what its mask learns"


def cmd_ls(args) -> int:
    from .data.noise import HUMAN_NOISE
    from .report.tables import json_safe
    from .results import load

    store = _store(args)
    res = load(store.root)
    rows = []
    for _, r in res.runs.iterrows():
        done = res.levels[res.levels["run_id"] == r["run_id"]] if len(res.levels) else res.levels
        per_seed = done.groupby("seed")["level"].nunique().min() if len(done) else 0
        rows.append({"run": r["run_id"], "preset": r["preset"], "summary": _summary(r["config"], HUMAN_NOISE),
                     "status": r["status"], "levels_done": int(per_seed), "levels": int(r["levels"]) + 1,
                     "seeds": int(r["seeds"]), "error": r["error"]})
    rows = json_safe(rows)  # valid JSON always: a run started from --config alone has no preset (null, not NaN)
    if args.format == "json":
        print(json.dumps(rows, indent=1, allow_nan=False))
        return 0
    from . import terminal
    from rich.table import Table
    from rich.text import Text

    if not rows:
        folders = store.run_folders()
        print(f"no runs in {store.root}" + (f"'s index, but {len(folders)} in its run folders: `sparsedd doctor --root "
                                            f"{store.root} --repair` rebuilds the index" if folders else ""))
        return 0
    table = Table()
    table.add_column("run", no_wrap=True)
    for col in ("preset", "summary", "status", "levels done", "seeds"):
        table.add_column(col)
    for r in rows:  # cells from the store are Text: no rich markup in them is interpreted
        table.add_row(r["run"], *(Text(str(r[k] or "")) for k in ("preset", "summary", "status")),
                      f"{r['levels_done']}/{r['levels']}", str(r["seeds"]))
    terminal.console().print(table)
    return 0


def _summary(cfg: dict, human_noise) -> str:
    """A run in a few words, from its stored config (a config that lacks a key reads '?')."""
    try:
        # a human noise type has no rate: its name says which labels the run trained on
        noise = cfg["data"]["noise_type"] if cfg["data"]["noise_type"] in human_noise else cfg["data"]["noise"]
        return (f"{cfg['data']['name']} noise={noise} {cfg['model']['name']} "
                f"{cfg['prune']['method']}/{cfg['prune']['scope']} {cfg['retrain']['mode']}")
    except (KeyError, TypeError):
        return "?"


def _run_and_curve(args):
    from .results import resolve_run, run_curve

    store = _store(args)
    run_id = resolve_run(store, args.run)
    curve = run_curve(store, run_id)
    if not len(curve):
        raise SparseddError(f"run {run_id} has no finished level yet; run it with `sparsedd run` first")
    return store, run_id, curve


def cmd_show(args) -> int:
    from .analysis.curves import without_unstable
    from .report.tables import curve_markdown, curve_table, json_safe, level_rows, mean_rows
    from .results import run_config

    store, run_id, curve = _run_and_curve(args)
    kept = without_unstable(curve, args.unstable)  # what the means are over
    if args.format == "json":  # levels: per seed (and level), all of them; mean: over the seeds, per level
        doc = {"run": run_id, "config": run_config(store, run_id), "levels": level_rows(curve), "mean": mean_rows(kept),
               "unstable_levels": args.unstable}
        print(json.dumps(json_safe(doc), indent=1, allow_nan=False))
        return 0
    if not len(kept):
        raise SparseddError("every level ended unstable: no mean is left with --unstable drop; show with "
                            "--unstable keep (or --format json for the per-seed rows)")
    if args.format == "markdown":
        print(curve_markdown(kept, dropped=_dropped(curve, kept)))
    else:
        from . import terminal

        terminal.console().print(curve_table(run_id, kept, dropped=_dropped(curve, kept)))
    _note_troubles(store, run_id, curve, hint=args.unstable == "keep")
    return 0


def _dropped(curve, kept) -> list[tuple[int, int]] | None:
    """The (seed, level) pairs left out of the means (None where nothing was dropped: ``--unstable keep``)."""
    if len(kept) == len(curve):
        return None
    gone = curve.loc[curve.index.difference(kept.index)]
    return [(int(r.seed), int(r.level)) for r in gone.itertuples()]


def cmd_plot(args) -> int:
    from .inputs import output_file
    from .report.plots import IMAGE_TYPES, plot_curve
    from .report.tables import run_title
    from .results import run_config

    if args.out is not None:  # before anything is read or written
        output_file(args.out, "--out", IMAGE_TYPES)
    store, run_id, curve = _run_and_curve(args)
    out = plot_curve(curve, args.out or f"{run_id}.png", run_title(run_config(store, run_id), run_id), args.unstable)
    print(out)
    return 0


def cmd_export(args) -> int:
    if args.to is not None:
        return _export_to_tracker(args)
    from .export import SUFFIXES, export_level
    from .inputs import output_file

    if args.level is None or args.out is None:
        raise SparseddError("export needs --level N and --out FILE.safetensors (or --to mlflow|wandb to log the run)")
    if args.experiment is not None:
        raise SparseddError("--experiment applies to --to mlflow|wandb")
    output_file(args.out, "--out", SUFFIXES)  # before anything is read
    store = _store(args)
    print(export_level(args.run, args.level, args.out, seed=args.seed, layout=args.layout or "plain", root=store.root))
    return 0


def _export_to_tracker(args) -> int:
    from .trackers import EXPERIMENT, log_run, parse_target, writes_root

    if any(v is not None for v in (args.level, args.seed, args.out, args.layout)):
        raise SparseddError("--to logs every finished level of the run; --level, --seed, --out and --layout are for "
                            "a file export")
    store = _store(args, writable=writes_root(*parse_target(args.to)))  # the default stores are under the root
    done = log_run(args.run, args.to, root=store.root, experiment=args.experiment or EXPERIMENT)
    added = f"{done['steps']} steps, {done['params']} params, {done['artifacts']} artifacts added"
    print(f"{done['tracker']}: run {done['run']} at {done['where']}: "
          f"{added if done['steps'] or done['params'] or done['artifacts'] else 'nothing new (already logged)'}")
    return 0


def _int_list(text: str | None, option: str, all_ok: bool = True) -> list[int] | None:
    """``--levels 1,2,4``-style integers; None for 'all' (where ``all_ok``) or for an absent option."""
    if text is None or (all_ok and text == "all"):
        return None
    try:
        return [int(t) for t in text.split(",")] if text.strip() else []  # (an empty item is a typo: refused)
    except ValueError:
        either = " or 'all'" if all_ok else ""
        raise SparseddError(f"{option} takes a comma-separated list of integers{either}, got {text!r}") from None


def cmd_analyze(args) -> int:
    from rich.console import Console  # (its log lines are padded to its width: rich's own, not 240)

    from .analysis.runner import Analyzer, parse_settings
    from .report.tables import scalar_columns
    from .results import resolve_run

    settings = parse_settings(args.kind, args.set)
    options = _options(args, progress=False)  # the device checked before the store is touched
    store = _store(args)
    run_id = resolve_run(store, args.run)
    console = Console(stderr=True, log_path=False)  # (the caller's file:line is no news to a user)
    analyzer = Analyzer(store, run_id, options)
    options.apply_threads(analyzer.cfg.model.name)  # the default depends on the run's model
    levels, seeds = _int_list(args.levels, "--levels"), _int_list(args.seeds, "--seeds")
    analyzer.check_asked(args.kind, levels, seeds)
    table = analyzer.run(args.kind, settings, levels, seeds,
                         progress=None if args.no_progress else console.log)
    if args.format == "json":
        print(table.to_json(orient="records", indent=1))
        return 0
    print(scalar_columns(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    path = write_report(args.root, args.runs, args.out, args.unstable)
    print(path)
    return 0


def cmd_doctor(args) -> int:
    from .doctor import describe, examine, repair

    store = _store(args)
    found = examine(store)
    print("\n".join(describe(store, found)))
    if not args.repair:
        return 0 if found.healthy else 1
    if not found.healthy and not os.access(store.root, os.W_OK | os.X_OK):
        raise SparseddError(f"doctor --repair needs a store it can write, and {store.root} is read-only; repair a "
                            "writable copy of it, or run as a user who may write it")
    print("\n".join(repair(store, found)))
    return 0


def cmd_merge(args) -> int:
    from .merge import merge

    result = merge(args.sources, _store(args, writable=True), results_only=args.results_only,
                   progress=not args.no_progress)
    for line in result.skipped:
        print(f"  {line}")
    print(result.summary())
    return 1 if result.skipped else 0


def cmd_bench(args) -> int:
    if args.out is not None:
        from .inputs import output_file

        output_file(args.out, "--out", ("json",))
    options = _options(args)
    if args.preset is None:  # the reference benchmark
        return _bench_suite(args, options)
    from .bench.preset import bench_preset
    from .bench.suite import busy_cores

    if args.rounds is not None or args.steps is not None or args.quick:
        raise SparseddError("--rounds, --steps and --quick apply to the reference benchmark (bench without --preset)")
    ks = _int_list(args.ks, "--ks", all_ok=False) or []
    batches, warmup = 10 if args.batches is None else args.batches, 2 if args.warmup is None else args.warmup
    with busy_cores(args.busy):
        row = bench_preset(args.preset, sets=args.set, device=options.device, batches=batches,
                           warmup=warmup, data_dir=options.data_dir, accel=options.accel, ks=ks)
    _write_out(args.out, row)  # (it was checked first, and ignored here)
    if args.format == "json":
        print(json.dumps(row, indent=1))
        return 0
    for k, v in row.items():
        print(f"{k:>18}: {v:.4g}" if isinstance(v, float) else f"{k:>18}: {v}")
    return 0


def _write_out(out: str | None, doc: Any) -> None:
    """``bench --out``: the JSON result, written whole or not at all."""
    if out:
        from .store.files import write_output

        write_output(Path(out), json.dumps(doc, indent=1) + "\n")


def _bench_suite(args, options) -> int:
    from .bench.suite import format_table, run_suite

    if args.set or args.channels_last or args.compile or args.ks or args.batches is not None or args.warmup is not None:
        raise SparseddError("--set, --channels-last, --compile, --ks, --batches and --warmup apply to `bench --preset "
                            "NAME` only")
    result = run_suite(quick=args.quick, device=options.device, data_dir=options.data_dir, rounds=args.rounds,
                       steps=args.steps, progress=lambda msg: print(msg, file=sys.stderr, flush=True),
                       capture=args.capture, threads=options.threads, busy=args.busy)
    _write_out(args.out, result)
    print(json.dumps(result, indent=1) if args.format == "json" else format_table(result))
    return 0


def _slurm_flags(args, sweep) -> dict:
    """The checked ``--slurm KEY=VALUE`` options (over the sweep file's [slurm] table)."""
    from .sweep import slurm as slurm_options

    if args.slurm and args.executor != "slurm":
        raise SparseddError("--slurm applies to --executor slurm")
    return slurm_options.check(slurm_options.parse_flags(args.slurm), "--slurm")


def cmd_sweep(args) -> int:
    from .sweep import SweepOptions, as_json, describe, load_sweep, plan_json, run_sweep
    from .sweep.slurm import merged

    sweep = load_sweep(args.file)  # every run checked before anything runs
    if args.executor != "ray" and (args.address or args.gpus_per_task):
        raise SparseddError("--address and --gpus-per-task apply to --executor ray")
    slurm = _slurm_flags(args, sweep)
    if args.dry_run:  # (after the flags' checks: a dry run tells whether the real one would start)
        print(plan_json(sweep) if args.format == "json" else describe(sweep))
        return 0
    if args.gpus_per_task or (args.executor == "slurm" and merged(sweep.slurm, slurm).get("gpus_per_node")):
        device = "cuda"
    elif args.executor == "local" or args.device != "auto":
        device = None  # --device as given; auto: what this machine has
    else:  # auto: the workers' devices are not this machine's; without GPUs asked for, the CPU
        device = "cpu"
    here = args.executor == "local"  # a Ray cluster's devices are its workers', not this machine's
    options = _options(args, here=here) if device is None else _options(args, here=here, device=device)
    _store(args, writable=True)  # --root checked before the sweep writes its record there
    opts = SweepOptions(executor=args.executor, workers=args.workers, address=args.address,
                        cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task, slurm=slurm,
                        retries=args.retries, report=not args.no_report, execution=options)
    result = run_sweep(sweep, args.root, opts)
    if args.format == "json":
        print(as_json(result))
    else:
        print(f"sweep {result.sweep_id}: {len(result.complete)} runs complete, {len(result.skipped)} were already, "
              f"{len(result.failed)} failed -> {result.folder}")
        for run_id, error in result.failed.items():
            print(f"  failed {run_id}: {error}")
        if result.report:
            print(f"report: {result.report}")
    return 1 if result.failed else 0


def cmd_claims(args) -> int:
    from rich.console import Console

    from . import terminal

    from .claims import markdown, run_claims, table

    options = _options(args)
    _store(args, writable=True)  # --root checked before the claims' sweep writes there
    console = Console(stderr=True, log_path=False)
    doc, path = run_claims(args.preset, args.set, args.seeds, args.root, options, workers=args.workers,
                           executor=args.executor, only=_int_list(args.only, "--only"),
                           progress=None if args.no_progress else console.log, unstable=args.unstable)
    if args.format == "json":
        print(json.dumps(doc, indent=1))
    elif args.format == "markdown":
        print(markdown(doc))
    else:
        terminal.console().print(table(doc))
        print(f"saved: {path}\nreport: sparsedd report {' '.join(dict.fromkeys(doc['runs'].values()))} "
              f"--root {path.parent.parent} --out DIR")
    return 0


def _flags() -> dict[str, argparse.ArgumentParser]:
    """The flags several commands share, each declared once (argparse parents)."""
    from .options import MAX_THREADS

    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    root, data, threads, sets, execution = parent(), parent(), parent(), parent(), parent()
    root.add_argument("--root", default=None, help="results root (default: $SPARSEDD_ROOT or ./runs)")
    data.add_argument("--data-dir", default=None, help="folder holding the data sets (e.g. DIR/mnist/)")
    data.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    data.add_argument("--no-progress", action="store_true", help="no progress display")
    threads.add_argument("--threads", type=_integer(0, MAX_THREADS), default=0, metavar="N",
                         help="torch CPU threads (default: 1 for the fully connected models on CPU, else torch's choice)")
    sets.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    e = execution
    e.add_argument("--channels-last", action="store_true", help="NHWC memory order for image models (GPU speed)")
    e.add_argument("--compile", action="store_true", help="torch.compile the model (GPU speed; slow to start)")
    e.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                   help="replay each training step as a CUDA graph (GPU speed): on, off, or auto (off until "
                        "benchmarks/gpu_check.py has compared it with eager training on a GPU; default auto)")
    e.add_argument("--batch", choices=("auto", "on", "off"), default="auto",
                   help="train the seeds of a level together as one batched computation (fully connected models): "
                        "auto (where that is faster on this machine, measured once), on, off (default auto)")
    e.add_argument("--no-batch", action="store_true", help="the same as --batch off")
    e.add_argument("--sparse", choices=("auto", "on", "off"), default="auto",
                   help="compute sparse fully connected levels on their live units with sparse kernels: auto (below "
                        "the density where that is faster, measured once per machine; never on a GPU), on, off "
                        "(default auto)")
    e.add_argument("--checkpoint-every", type=_amount, default=60.0, metavar="S",
                   help="checkpoint inside an epoch every S seconds (default 60)")
    e.add_argument("--checkpoint-epoch", type=_amount, default=1.0, metavar="S",
                   help="checkpoint at an epoch's end if S seconds passed since the last (0: every epoch)")
    return {"root": root, "data": data, "threads": threads, "set": sets, "execution": execution}


def _format(parser: argparse.ArgumentParser, *choices: str) -> None:
    parser.add_argument("--format", choices=("table", *choices), default="table")


def _unstable_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--unstable", choices=("keep", "drop"), default="keep", help=help)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparsedd", description="Sparse double descent: iterative pruning under label noise.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    f = _flags()

    def command(name: str, help: str, *flags: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[f[k] for k in flags])

    r = command("run", "run or resume an experiment (default: the quick MNIST-1D demo)",
                "root", "data", "threads", "set", "execution")
    r.add_argument("--preset", default=None, help=f"a named preset: {', '.join(config_load.presets())}")
    r.add_argument("--config", default=None, help="a TOML file, applied after the preset")
    r.add_argument("--seeds", type=int, default=None, help="number of replicates (seed, seed+1, ...)")
    r.set_defaults(func=cmd_run)

    ls = command("ls", "list runs", "root")
    _format(ls, "json")
    ls.set_defaults(func=cmd_ls)

    _add_views(command)

    from .analysis.runner import ANALYSES

    an = command("analyze", f"analyses of a run: {', '.join(ANALYSES.names())}", "root", "data", "threads", "set",
                 "execution")
    an.add_argument("run", help="run id (or a unique prefix)")
    an.add_argument("kind", help="; ".join(f"{k}: {ANALYSES[k].summary}" if ANALYSES[k].summary else k
                                           for k in ANALYSES.names()))
    an.add_argument("--levels", default=None, help="comma-separated levels (default: all finished)")
    an.add_argument("--seeds", default=None, help="comma-separated seeds (default: all)")
    _format(an, "json")
    an.set_defaults(func=cmd_analyze)

    _add_bench(command)
    _add_sweep(command)
    _add_claims(command)
    _add_merge(command)
    _add_export(command)

    dr = command("doctor", "check every stage and the index of a store; --repair sets damaged stages aside "
                           "(computed again when next needed) and rebuilds the index from the stage folders", "root")
    dr.add_argument("--repair", action="store_true", help="repair what the check finds")
    dr.set_defaults(func=cmd_doctor)

    return p


def _add_views(command) -> None:
    """`sparsedd show`, `plot` and `report`: what a run's levels look like, as a table, a figure or a page."""
    sh = command("show", "the per-level curve of a run", "root")
    sh.add_argument("run", help="run id (or a unique prefix)")
    _format(sh, "json", "markdown")
    _unstable_flag(sh, "the means over seeds: with the levels whose last epoch ended unstable (keep, default) or "
                       "without them (drop); the per-seed rows of --format json list them either way")
    sh.set_defaults(func=cmd_show)

    rp = command("report", "an HTML report (figures as PNG and PDF, tables as CSV) of runs", "root")
    rp.add_argument("runs", nargs="+", help="run ids (or unique prefixes); several are also overlaid")
    rp.add_argument("--out", required=True, help="output folder; DIR/index.html is the page")
    _unstable_flag(rp, "the levels whose last epoch ended unstable, marked x: in the means, phases and distances "
                       "(keep, default) or left out of them (drop); the table of every level keeps them")
    rp.set_defaults(func=cmd_report)

    pl = command("plot", "plot accuracy against sparsity", "root")
    pl.add_argument("run", help="run id (or a unique prefix)")
    pl.add_argument("--out", default=None, help="output PNG (default: RUN.png)")
    _unstable_flag(pl, "the levels whose last epoch ended unstable, marked x: in the lines (keep, default) or "
                       "left out of them (drop)")
    pl.set_defaults(func=cmd_plot)


def _add_bench(command) -> None:
    """`sparsedd bench`: the reference benchmark, or a preset's seconds per epoch."""
    bn = command("bench", "our trainers against the common DataLoader loop (LeNet-300-100, MNIST-1D MLP); "
                          "with --preset: seconds per epoch of a preset's model and data", "data", "threads", "set")
    bn.add_argument("--preset", default=None, help=f"one of: {', '.join(config_load.presets())}")
    bn.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs; the times mean nothing)")
    bn.add_argument("--rounds", type=_integer(1, 1000), default=None,
                    help="without --preset: measurements of each figure, median taken (default 3)")
    bn.add_argument("--steps", type=_integer(2, 100_000), default=None,
                    help="without --preset: training steps timed per measurement (default 60)")
    bn.add_argument("--out", default=None, help="also write the JSON result to this file")
    bn.add_argument("--busy", type=_integer(0, 64), default=0, metavar="N",
                    help="keep N other processes busy (one core each) while measuring: the times under load")
    bn.add_argument("--batches", type=_integer(1, 100_000), default=None,
                    help="with --preset: training steps and evaluation batches timed (default 10)")
    bn.add_argument("--warmup", type=_integer(0, 100_000), default=None,
                    help="with --preset: steps run before timing (default 2)")
    bn.add_argument("--channels-last", action="store_true")
    bn.add_argument("--compile", action="store_true")
    bn.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                    help="with --preset: replay the training step as a CUDA graph (on a GPU); without: the "
                         "captured columns, on a GPU (auto), never (off) or also on a CPU, run eagerly (on)")
    bn.add_argument("--ks", default="", metavar="K,K",
                    help="with --preset: also seconds per model-epoch of K networks trained side by side (e.g. 2,3,4)")
    _format(bn, "json")
    bn.set_defaults(func=cmd_bench)


def _add_sweep(command) -> None:
    """`sparsedd sweep`: many runs from a sweep file."""
    from .sweep.spec import sweep_presets

    sw = command("sweep", "many runs from a sweep file (grid/zip axes over config keys), locally in parallel, "
                          "on a Ray cluster or as SLURM jobs", "root", "data", "threads", "execution")
    sw.add_argument("file", help=f"a sweep TOML file, or one of: {', '.join(sweep_presets())}")
    sw.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                    help="local: one process per task, as many at once as cores (default); ray: Ray tasks; "
                         "slurm: a SLURM job per task (submitit), with the file's [slurm] options")
    sw.add_argument("--workers", type=int, default=None,
                    help="tasks at once (default: the cores / the cluster's CPUs / slurm: every task, SLURM queues them)")
    sw.add_argument("--address", default=None, help="ray: address of a running cluster (default: start a local one)")
    sw.add_argument("--cpus-per-task", type=_amount, default=1.0, help="ray: CPUs each task asks for (default 1)")
    sw.add_argument("--gpus-per-task", type=_amount, default=0.0, help="ray: GPUs each task asks for (default 0)")
    sw.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                    help="slurm: an sbatch option over the sweep file's [slurm] table (repeatable): partition, time, "
                         "gpus_per_node, cpus_per_task, mem_gb, account, qos, constraint, exclude, job_name, setup, "
                         "additional_parameters.NAME, cluster")
    sw.add_argument("--retries", type=_integer(0, 100), default=None,
                    help="tries again after a failure (default: the file's, else 1)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    sw.add_argument("--no-report", action="store_true", help="no overlaid report at the end")
    _format(sw, "json")
    sw.set_defaults(func=cmd_sweep)


def _add_claims(command) -> None:
    """`sparsedd claims`: the paper's six claims over seeds."""
    cl = command("claims", "the paper's six claims measured over seeds: builds the runs and analyses they need "
                           "from a preset (a sweep; finished stages reused), then one row per claim with a verdict",
                 "root", "data", "threads", "set", "execution")
    cl.add_argument("--preset", default=None, help=f"the base preset (default {config_load.DEFAULT_PRESET}): "
                                                   f"{', '.join(config_load.presets())}")
    cl.add_argument("--seeds", type=int, default=None, help="seeds per run (at least 2; default: the preset's)")
    cl.add_argument("--only", default=None, metavar="N,N",
                    help="measure these claims only (comma-separated numbers), building only the runs they read")
    cl.add_argument("--workers", type=int, default=None, help="sweep tasks at once (default: the cores)")
    cl.add_argument("--executor", choices=("local", "inline"), default="local",
                    help="local: one process per sweep task (default); inline: every task in this process, one "
                         "after the other (no start-up cost; for small configurations)")
    _unstable_flag(cl, "the levels whose last epoch ended unstable (`sparsedd show` notes them): measured as they "
                       "are (keep, default) or left out (drop; saved as another result); listed either way")
    _format(cl, "json", "markdown")
    cl.set_defaults(func=cmd_claims)


def _add_export(command) -> None:
    """`sparsedd export`: a level as a safetensors file, or the run logged to an experiment tracker."""
    ex = command("export", "a level's weights and masks as a safetensors file with its provenance (--level, --out), "
                           "or the run's curve logged to MLflow or W&B (--to)", "root")
    ex.add_argument("run", help="run id (or a unique prefix)")
    ex.add_argument("--level", type=_integer(0, 1_000_000), default=None, help="the level to export")
    ex.add_argument("--seed", type=int, default=None, help="the seed to export (needed when the run has several)")
    ex.add_argument("--out", default=None, help="output file, FILE.safetensors (written atomically)")
    ex.add_argument("--layout", choices=("plain", "torch-prune"), default=None,
                    help="plain: model/<name> and mask/<name> (default); torch-prune: torch.nn.utils.prune's names "
                         "(<module>.weight_orig, <module>.weight_mask), for load_state_dict into a pruned torch model")
    ex.add_argument("--to", default=None, metavar="mlflow[=URI]|wandb[=PROJECT]",
                    help="log every finished level as a step, the config as params and the curve as an artifact: "
                         "MLflow (default: the file store ROOT/mlruns) or W&B (default: offline, ROOT/wandb); "
                         "a second call adds nothing")
    ex.add_argument("--experiment", default=None, help="with --to: the MLflow experiment or W&B project (default sparsedd)")
    ex.set_defaults(func=cmd_export)


def _add_merge(command) -> None:
    """`sparsedd merge`: other stores' stages and runs brought into one."""
    mg = command("merge", "bring the stages and runs of other stores into --root, each file verified by its checksum "
                          "(a damaged stage is reported and skipped; stages already there are kept; stores that "
                          "record other data for the same data key are refused); exit 1 if anything was skipped",
                 "root")
    mg.add_argument("sources", nargs="+", metavar="SRC", help="the folder of a store (the --root it was run with)")
    mg.add_argument("--results-only", action="store_true",
                    help="leave the weights behind (final.pt, init.pt, checkpoints): the results are listed, shown and "
                         "reported; a run that needs such a stage computes it again")
    mg.add_argument("--no-progress", action="store_true", help="no progress bar")
    mg.set_defaults(func=cmd_merge)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    received: list[int] = []
    try:
        with _sigterm_as_interrupt() as received:
            return args.func(args)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated) or received:
            print(TERMINATED, file=sys.stderr)
            return 143
        print("sparsedd: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except SparseddError as e:
        if received:  # what the interrupted work raised on its way out: the signal is what ended it
            print(TERMINATED, file=sys.stderr)
            return 143
        print(f"sparsedd: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as e:  # the machine's, not the input's: a full disk, a folder we may not write, ...
        if e.errno == errno.ENOSPC:
            print(f"sparsedd: error: the disk is full at {e.filename or 'the results folder'}; free space and run "
                  "the same command again (what was finished is kept)", file=sys.stderr)
            return 1
        where = f": {e.filename}" if e.filename else ""
        print(f"sparsedd: error: {e.strerror or e}{where} (what was finished is kept; fix this and run the same "
              "command again)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
