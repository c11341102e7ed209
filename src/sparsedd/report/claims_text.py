"""A claims result (`sparsedd claims`, saved as ``claims/<sweep id>.json`` in the store) as text: the
terminal table, markdown, and the rows and claim texts the report shows; and the saved results a
report reads. Formatting only: measuring the claims is :mod:`sparsedd.claims`."""

from __future__ import annotations

from typing import Any

from ..store import Store
from ..store.files import DamagedFile, read_json


def stored(store: Store, run_ids: list[str]) -> tuple[list[dict[str, Any]], list[DamagedFile]]:
    """The saved claims results whose runs are all among ``run_ids`` (for the report), each verified against
    its checksum; and the saved results that are damaged (which runs they were over cannot be known, so the
    report names them rather than show them or stop)."""
    out, damaged = [], []
    for path in store.claims_files():
        try:
            doc = read_json(path)
        except DamagedFile as e:
            damaged.append(DamagedFile(path, e.why, DAMAGED_CLAIMS_ADVICE))
            continue
        if set(doc.get("runs", {}).values()) <= set(run_ids):
            out.append(doc)
    return out, damaged


DAMAGED_CLAIMS_ADVICE = ("not shown; run the `sparsedd claims` command that made it again (it measures it anew from "
                         "the stored runs), or `sparsedd doctor --repair` to set it aside")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _ci(ci: list[float | None]) -> str:
    return "n/a" if None in ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _part_label(part: dict[str, Any], shared: bool) -> str:
    """A part's line: where it was measured (the setting, or the level and its sparsity), after its
    measure when the parts of the claim measure different things."""
    where = part.get("setting") or (f"level {part['level']}" + (f" ({100 * part['sparsity']:.2f}% sparse)"
                                                                 if "sparsity" in part else "")
                                    if "level" in part else "")
    return "  " + (where if shared and where else f"{part['measure']}" + (f" ({where})" if where else ""))


def rows_for_text(doc: dict[str, Any]) -> list[list[str]]:
    """claim, measure, value, CI, test, verdict: one line per claim, then one per part of multi-part claims."""
    lines = []
    for c in doc["claims"]:
        lines.append([str(c["claim"]), c["measure"], _fmt(c["value"]), _ci(c["ci"]), c["test"], c["verdict"]])
        if len(c["parts"]) > 1:
            shared = len({p["measure"] for p in c["parts"]}) == 1
            lines += [["", _part_label(p, shared), _fmt(p["value"]), _ci(p["ci"]), p["test"], p["verdict"]]
                      for p in c["parts"]]
    return lines


HEAD = ["claim", "measure", "value", "CI", "test", "verdict"]


def texts(doc: dict[str, Any]) -> list[str]:
    """"N. claim text (runs)" for each claim."""
    return [f"{c['claim']}. {c['text']} (runs {', '.join(c['runs'])})" for c in doc["claims"]]


def unstable_note(doc: dict[str, Any]) -> str | None:
    """What the result did with the levels that ended unstable, where there were any or they were dropped
    (None for a result saved before it recorded them)."""
    if "unstable" not in doc:
        return None
    ended, dropped = doc["unstable"]["ended"], doc["unstable"]["levels"] == "drop"
    which = ", ".join(f"run {e['run']} seed {e['seed']} level {e['level']} ({e['kind']})" for e in ended)
    if not ended:
        return "Measured without the levels that ended unstable: none did." if dropped else None
    return (f"{len(ended)} level(s) ended unstable: {which}. " +
            ("Measured without them (--unstable drop)." if dropped else
             "Measured as they ended; `--unstable drop` measures without them."))


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---:|---|---:|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows_for_text(doc)]
    note = unstable_note(doc)
    return "\n".join(lines + ["", f"{doc['interval']}; {doc['seeds']} seeds; preset {doc['preset']}.", ""]
                     + ([note, ""] if note else []) + texts(doc))


def table(doc: dict[str, Any]):
    from rich.table import Table

    note = unstable_note(doc)
    t = Table(title=f"claims: preset {doc['preset']}, {doc['seeds']} seeds",
              caption=doc["interval"] + (f"\n{note}" if note else ""))
    for h in HEAD:
        t.add_column(h, justify="right" if h in ("claim", "value") else "left")
    for r in rows_for_text(doc):
        t.add_row(*r)
    return t
