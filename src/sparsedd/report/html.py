"""`sparsedd report RUN [RUN ...] --out DIR`: a self-contained HTML page, figures (PNG, PDF), tables (CSV)."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ..analysis.curves import (check_unstable, distance_table, phases_table, phases_without_unstable,
                               without_unstable)
from ..errors import SparseddError
from ..inputs import folder
from ..results import load, resolve_run, run_config
from ..store import Store
from ..store.files import save_figure, write_output
from . import figures as F
from .plots import plain
from .tables import json_value, run_title, scalar_columns, sparsity_words

# Runs in the browser: records script errors and broken images, so a headless test can read the DOM.
CHECK_JS = """
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target && e.target.src)), true);
const origError = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = JSON.stringify(broken);
  document.body.dataset.errors = JSON.stringify(window.__errors);
  document.body.dataset.ready = 'yes';
});
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
code { background: #f4f4f4; padding: 1px 3px; }
"""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """For overlaid runs: a label per run naming the settings in which the runs differ."""
    flats = {r: _flat(c) for r, c in configs.items()}
    keys = sorted({k for f in flats.values() for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    return {r: ", ".join(f"{k}={f.get(k)}" for k in differ) or r for r, f in flats.items()}


def _file_name(name: str) -> str:
    """A figure's or table's file name, which is built from run ids: only ids checked as hex reach here,
    and this refuses anything else (a '../' from a foreign index would write outside --out)."""
    if not re.fullmatch(r"[0-9a-z][0-9a-z_-]*", name):
        raise ValueError(f"not a safe file name: {name!r}")
    return name


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        try:
            (out / "figures").mkdir(parents=True, exist_ok=True)
            (out / "tables").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SparseddError(f"--out {out}: cannot create the report's folders ({e.strerror or e}); "
                                f"give a writable folder") from None
        self.parts: list[str] = []

    def figure(self, fig, name: str, caption: str) -> None:
        name = _file_name(name)
        for ext in ("png", "pdf"):
            save_figure(fig, self.out / "figures" / f"{name}.{ext}", dpi=110)
        plt.close(fig)
        self.parts.append(f'<figure><img src="figures/{name}.png" alt="{html.escape(caption)}">'
                          f'<figcaption>{html.escape(caption)} (<a href="figures/{name}.pdf">PDF</a>)</figcaption></figure>')

    def table(self, df: pd.DataFrame, name: str, caption: str, show: bool = True) -> None:
        name = _file_name(name)
        write_output(self.out / "tables" / f"{name}.csv", df.to_csv(index=False))
        if show:
            self.parts.append(f"<p>{html.escape(caption)} (<a href=\"tables/{name}.csv\">CSV</a>)</p>" +
                              _shown(df).to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0))
        else:
            self.parts.append(f'<p>{html.escape(caption)}: <a href="tables/{name}.csv">CSV</a></p>')

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{text}</p>")

    def write(self, title: str) -> Path:
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body><h1>{html.escape(title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")
        path = self.out / "index.html"
        write_output(path, page)
        return path


def _shown(df: pd.DataFrame) -> pd.DataFrame:
    """A table as the page shows it: its scalar columns (the lists stay in its CSV), with a missing or
    non-finite value as '-', as the command line shows them (a None or NaN in a column of mixed values read
    "None" or "nan")."""
    out = scalar_columns(df).copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: "-" if json_value(v) is None else v)
    return out


def _analysis_rows(res, run_id: str, kind: str) -> pd.DataFrame:
    a = res.analyses[(res.analyses["run_id"] == run_id) & (res.analyses["kind"] == kind)]
    if not len(a):
        return pd.DataFrame()
    # one settings variant per kind: the one with the most results
    counts = a["settings"].map(lambda s: json.dumps(s, sort_keys=True)).value_counts()
    a = a[a["settings"].map(lambda s: json.dumps(s, sort_keys=True)) == counts.index[0]]
    levels = res.levels[res.levels["run_id"] == run_id][["seed", "level", "sparsity", "test_acc"]]
    rows = pd.DataFrame([{"seed": r["seed"], "level": r["level"], "settings": json.dumps(r["settings"]), **r["result"]}
                         for _, r in a.iterrows()])
    rows = rows.merge(levels.rename(columns={"test_acc": "level_test_acc"}), on=["seed", "level"])
    return rows.sort_values(["seed", "level"]).reset_index(drop=True)


def _analysis_sections(w: _Writer, res, run_id: str, title: str) -> None:
    """A figure and a table for each registered analysis with a figure that the run has results of."""
    for kind, analysis in figured_analyses():
        rows = _analysis_rows(res, run_id, kind)
        if not len(rows):
            continue
        w.figure(analysis.figure(rows, title), f"{run_id}-{kind}", f"{kind} (settings {rows['settings'].iloc[0]})")
        w.table(scalar_columns(rows), f"{run_id}-{kind}", f"{kind} results")  # (the page shows it through _shown)


def _selection_section(w: _Writer, levels: pd.DataFrame, cfg: dict[str, Any], run_id: str) -> None:
    """With a validation split: the level each rule picks without test labels and its regret (the select analysis)."""
    from ..analysis.kinds.select import SelectSettings, selection_table

    if not cfg.get("data", {}).get("val_split") or levels["level"].nunique() < 2:
        return
    table = selection_table(levels, SelectSettings())
    w.table(table, f"{run_id}-select", "The level picked without test labels (select analysis): per rule, the "
            "levels picked and the best test levels per seed, and the regret (best test accuracy minus the picked "
            "level's) with its 95% t-interval over seeds")


def figured_analyses() -> list[tuple[str, Any]]:
    """The registered analyses that have a figure, in registration order (the report's sections)."""
    from ..analysis.kinds import ANALYSES

    return [(kind, ANALYSES[kind]) for kind in ANALYSES.names() if ANALYSES[kind].figure is not None]


def _claims_section(w: _Writer, store: Store, run_ids: list[str]) -> None:
    """The claims computed by `sparsedd claims` over runs that are all among those shown."""
    from .claims_text import HEAD, rows_for_text, stored, texts, unstable_note

    docs, damaged = stored(store, run_ids)
    for bad in damaged:  # a damaged result is named, never shown; the rest of the report stands
        print(f"sparsedd: note: {bad}", file=sys.stderr)
        w.p(f"<strong>{html.escape(str(bad))}.</strong>")
    for doc in docs:
        dropped = doc.get("unstable", {}).get("levels") == "drop"
        numbers = ", ".join(str(c["claim"]) for c in doc["claims"])  # (results of another --only differ here)
        w.h(f"Claim{'s' if len(doc['claims']) > 1 else ''} {numbers} (preset {doc['preset']}, {doc['seeds']} seeds"
            f"{', unstable levels dropped' if dropped else ''})")
        roles = ", ".join(f"{role} <code>{rid}</code>" for role, rid in doc["runs"].items())
        sets = " ".join(f"--set {s}" for s in doc.get("set") or [])  # (and of another --set, here)
        w.p(f"Made by <code>sparsedd claims</code>{f' <code>{html.escape(sets)}</code>' if sets else ''} (result "
            f"<code>{html.escape(str(doc['id']))}</code>) over the runs {roles}; {html.escape(doc['interval'])}. "
            "A claim holds when its interval lies on the tested side of the threshold, does not hold when it lies "
            "on the other side, and is inconclusive when it contains the threshold (see docs/results/claims.md).")
        if note := unstable_note(doc):
            w.p(html.escape(note))
        w.table(pd.DataFrame(rows_for_text(doc), columns=HEAD), f"claims-{doc['id']}", "One row per claim, "
                "then its parts")
        w.p("<br>".join(html.escape(t) for t in texts(doc)))


def _unstable_paragraph(w: _Writer, levels: pd.DataFrame, run_id: str, root: Path, unstable: str) -> None:
    """Which levels ended unstable (marked x in the curve), and whether the means and phases include them."""
    bad = levels[levels["unstable"] != ""].sort_values(["seed", "level"])
    if not len(bad):
        return
    which = ", ".join(f"seed {int(s)} level {int(lv)} ({html.escape(k)})"
                      for s, lv, k in zip(bad["seed"], bad["level"], bad["unstable"]))
    w.p(f"{len(bad)} level(s) ended unstable (marked x): {which}. Their final accuracies are not what their masks "
        "learn (evaluation: evaluated far worse than trained, e.g. batch norm on population statistics; training: "
        "the training loss blew up late). " +
        ("The curves' means, the phases and the learning distances here leave them out "
         "(<code>--unstable drop</code>); the tables of every level, of the analyses and of the selection rules "
         "keep them." if unstable == "drop" else
         "The curves' means, the phases and the learning distances here include them; "
         "<code>sparsedd report ... --unstable drop</code> "
         f"leaves them out, and <code>{html.escape(phases_without_unstable(run_id, root))}</code> finds the phases "
         "without them."))


def write_report(root: str | Path | None, runs: list[str], out: str | Path, unstable: str = "keep") -> Path:
    """The report of ``runs`` in ``out``. Everything read from the store is escaped in the page (the
    store may come from elsewhere), and file names are built from run ids checked as hex. ``unstable="drop"``
    leaves each seed's levels that ended unstable out of the means, phases and distances (they stay marked x
    and in the table of every level)."""
    check_unstable(unstable, "--")
    out = folder(out, "--out", writable=True)  # before anything is read or written
    store = Store(root)
    run_ids = list(dict.fromkeys(resolve_run(store, r) for r in runs))  # a run named twice (id and prefix) is one
    res = load(store.root)
    configs = {r: run_config(store, r) for r in run_ids}
    w = _Writer(out)
    w.p("Made by <code>sparsedd report</code>. Accuracies are fractions of the test set (clean labels) and of the "
        f"training set (noisy or true labels); sparsity counts the {sparsity_words(res.levels[res.levels['run_id'].isin(run_ids)])} "
        "removed. Bands span the seeds' "
        "minimum to maximum." + (" Levels that ended unstable are left out of the means (--unstable drop)."
                                 if unstable == "drop" else ""))
    _claims_section(w, store, run_ids)
    if len(run_ids) > 1:
        labels = _differences(configs)
        w.h("Runs overlaid")
        w.p("<br>".join(f"<code>{html.escape(r)}</code>: {html.escape(labels[r])}" for r in run_ids))
        curves = [(plain(labels[r]), without_unstable(res.levels[res.levels["run_id"] == r], unstable))
                  for r in run_ids]
        curves = [c for c in curves if len(c[1])]
        if curves:
            w.figure(F.fig_overlay(curves, "test accuracy against sparsity"), "overlay",
                     "Test accuracy of every run (mean over seeds), labelled by the settings in which they differ.")
        else:
            w.p("No run has a level to overlay" + (" left with --unstable drop." if unstable == "drop" else " yet."))
    status = dict(zip(res.runs["run_id"], zip(res.runs["status"], res.runs["error"])))
    for r in run_ids:
        _run_section(w, store, res, r, configs[r], unstable, status.get(r, ("", None)))
    from .tensorboard import available, write_tensorboard

    if available():
        write_tensorboard(store.root, run_ids, w.out / "tensorboard")
        w.p(f"TensorBoard event files: <code>tensorboard --logdir {html.escape(str(w.out / 'tensorboard'))}</code>")
    return w.write("sparsedd report: " + ", ".join(run_ids))


def _mean_phases(phases: pd.DataFrame) -> dict[str, Any] | None:
    """The phases found on the seed mean, as the curve figure shades them (None where none were found)."""
    m = phases[phases["seed"] == "mean"] if len(phases) else phases
    if not len(m) or not bool(m["found"].iloc[0]):
        return None
    return {"found": True, **{row["phase"]: {"level": row["level"], "sparsity": row["sparsity"]} for _, row in m.iterrows()}}


def _run_section(w: _Writer, store: Store, res, r: str, cfg: dict[str, Any], unstable: str,
                 status: tuple[str, str | None]) -> None:
    """One run's part of the page: its status where it did not complete, its curve and phases, its levels,
    learning distance and analyses."""
    levels = res.levels[res.levels["run_id"] == r]
    w.h(run_title(cfg, r))
    if status[0] != "complete":  # (diverged, failed, partial, running: what `sparsedd ls` says, and why)
        why = f": {status[1]}" if status[1] else ""
        w.p(f"<strong>This run is {html.escape(status[0] or 'not recorded')}{html.escape(why)}.</strong>")
    title = plain(run_title(cfg, r))  # for the figures
    kept = without_unstable(levels, unstable)
    if not len(kept):
        w.p("No finished level yet." if not len(levels) else
            "Every level ended unstable: nothing is left with --unstable drop; report with --unstable keep.")
        return
    phases = phases_table(store, r, unstable=unstable) if kept["level"].nunique() >= 3 else pd.DataFrame()
    w.figure(F.fig_curve(levels, _mean_phases(phases), title, unstable), f"{r}-curve",
             "Test accuracy (left) and train accuracy on the noisy and true labels (right) against sparsity, "
             "with the phases found on the seed mean shaded (light, critical, sweet, collapsed).")
    _unstable_paragraph(w, levels, r, store.root, unstable)
    w.table(levels.drop(columns=["run_id", "layer_sparsity"]).reset_index(drop=True), f"{r}-levels",
            "Every level and seed", show=False)
    if len(phases):
        w.table(phases, f"{r}-phases", "Phases (rule: see sparsedd.analysis.phases)")
    dist = distance_table(store, r, unstable=unstable)
    rho = dist[dist["seed"] == "mean"]["spearman"].iloc[0]
    w.figure(F.fig_distance(kept, None if pd.isna(rho) else float(rho), title), f"{r}-distance",
             "Learning distance ||w - w_init||_2 over the weights each level has (from the dense initialization under "
             "its mask) beside test accuracy.")
    w.table(dist, f"{r}-distance", "Spearman correlation of learning distance and test accuracy over levels")
    _analysis_sections(w, res, r, title)
    _selection_section(w, levels, cfg, r)
