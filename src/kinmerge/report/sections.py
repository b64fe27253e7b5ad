"""The report's overview tables: one row per run (not one column), so the page stays readable
with many runs; the settings said once where the runs agree; the study's tables with intervals.

Each function takes loaded runs (or the tables ``report.budget`` computes) and returns HTML.
Scores print with ``digits`` decimals: ``compare.resolution`` picks as many as one example of
one task can move an average.

Example:
    ``runs_table(runs, styles, bed_labels(runs), digits=3)``
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kinmerge.kinship import METRIC_NAMES
from kinmerge.pool import short_id
from kinmerge.report.cells import esc, swatch, table
from kinmerge.report.fmt import mean_se, num, paired_text, pval, signed
from kinmerge.report.groups import Style
from kinmerge.report.plots import METRIC_SHORT, GainPoint, gain_correlations
from kinmerge.report.queries import RunHistory

__all__ = ["budget_section", "correlation_table", "early_stop_section", "run_settings", "runs_table",
           "settings_table", "testbeds_table"]

Beds = Mapping[tuple[tuple[str, ...], str | None], str]


def _stop(r: RunHistory) -> str:
    if r.stop_reason is None:
        return "—"
    return r.stop_reason + ("" if r.stop_generation is None else f" (gen {r.stop_generation} not made)")


def runs_table(runs: Sequence[RunHistory], styles: Mapping[str, Style], beds: Beds, *, digits: int) -> str:
    """One row per run: where, what, how it ended and what it found (± the evaluation's SE)."""
    rows, classes = [], []
    heldout = any(r.heldout for r in runs)  # scores are the selection part's; say what held-out gives
    for i, r in enumerate(runs):
        first = i == 0 or runs[i - 1].testbed != r.testbed  # the testbed named once, on its first row
        classes.append("first" if first and i else "")
        best = max((m for m in r.models.values() if m.score is not None), key=lambda m: m.score or 0.0, default=None)
        se = r.score_sem(best.id) if best is not None else None
        final = num(r.final_best, digits) + ("" if se is None else f" ± {num(se, digits)}")
        known = r.final_best is not None and r.foundation_best is not None
        gain = r.final_best - r.foundation_best if known else None  # type: ignore[operator]
        status = r.run.status + ("" if r.pending_generation is None else f" (gen {r.pending_generation} in progress)")
        rows.append([
            f"<code>{esc(beds[r.testbed])}</code>" if first else "",
            f"<a class='nw' href='#run-{i}'><code>{esc(r.run.id)}</code></a>",
            swatch(r.run.strategy, styles.get(r.variant)), esc("—" if r.run.seed is None else r.run.seed),
            esc(status), esc(_stop(r)), esc(r.merges_used), num(r.foundation_best, digits), final,
            signed(gain, digits), esc(r.examples_per_task or "—"),
            *((num(r.final_best_heldout, digits),) if heldout else ()),
        ])
    head = ["testbed", "run", "strategy", "seed", "status", "stop", "merges", "best foundation",
            "final best ± SE", "gain", "n / task", *(("held-out (final best)",) if heldout else ())]
    return table(head, rows, classes=classes, numeric=(3, 6, 7, 8, 9, 10, *((11,) if heldout else ())))


def testbeds_table(runs: Sequence[RunHistory], beds: Beds) -> str:
    """One row per testbed: its foundation models (with paths), tasks and evaluator, and its runs."""
    rows = []
    for bed, name in beds.items():
        mine = [r for r in runs if r.testbed == bed]
        r = mine[0]
        found = "<br>".join(
            f"<code>{esc(r.label_of(m.id))}</code>" + (f" <span class='muted'>{esc(m.path)}</span>" if m.path else "")
            for m in r.foundations) or "—"
        rows.append([f"<code>{esc(name)}</code>", f"<code>{esc(r.run_dir)}</code>", found,
                     ", ".join(f"<code>{esc(t)}</code>" for t in r.tasks) or "—", esc(r.examples_per_task or "—"),
                     f"<code>{esc(r.evaluator or '—')}</code>", esc(", ".join(x.run.id for x in mine))])
    return table(["testbed", "run directory", "foundation models", "tasks", "n / task", "evaluator key", "runs"], rows,
                 numeric=(4,))


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def run_settings(r: RunHistory) -> dict[str, str]:
    """A run's settings as ``{name: value}`` text, read from its stored fingerprint: the real
    values (strategy settings, seed, metric, recipe, evaluator limit / sample / tasks), not only
    the hashes that identify them. A run without a fingerprint shows its raw config."""
    fp = r.fingerprint
    out: dict[str, str] = {}
    if fp is None:
        out.update({f"config.{k}": _show(v) for k, v in sorted(r.run.config.items())})
        out["seed"] = _show(r.run.seed)
        return out
    out["strategy"] = fp.strategy
    out.update({f"strategy.{k}": _show(v) for k, v in sorted(fp.settings.items())})
    out["seed"] = _show(r.run.seed)
    out["kinship metric of the run"] = f"{METRIC_SHORT[fp.metric]} ({METRIC_NAMES[fp.metric]})"
    out["base"] = f"{short_id(fp.base)} (content id)"
    out.update({f"merge.{k}": _show(v) for k, v in sorted(fp.recipe.items())})
    settings = dict(fp.evaluator_settings or {})
    out["evaluator"] = _show(settings.pop("evaluator", fp.evaluator.split("-")[0]))
    tasks = settings.pop("tasks", None)
    if isinstance(tasks, Mapping):
        out["evaluator.tasks"] = ", ".join(sorted(tasks)) + " (contents hashed)"
    elif tasks is not None:
        out["evaluator.tasks"] = _show(tasks)
    out.update({f"evaluator.{k}": _show(v) for k, v in sorted(settings.items())})
    out["evaluator key"] = fp.evaluator
    if fp.racing:
        out.update({f"racing.{k}": _show(v) for k, v in sorted(fp.racing.items())})
    return out


def _who(subset: Sequence[RunHistory], runs: Sequence[RunHistory], beds: Beds) -> str:
    """Name a set of runs briefly: whole variants, else run ids (on every testbed that has them),
    else whole testbeds, else run by run."""
    ids = {id(r) for r in subset}
    for key, name in ((lambda r: r.variant, lambda k: k), (lambda r: r.run.id, lambda k: k),
                      (lambda r: r.testbed, lambda k: beds[k])):
        keys = list(dict.fromkeys(key(r) for r in subset))
        if all(id(r) in ids for r in runs if key(r) in keys):
            return ", ".join(name(k) for k in keys)
    return ", ".join(f"{beds[r.testbed]} · {r.run.id}" for r in subset)


def settings_table(runs: Sequence[RunHistory], beds: Beds) -> str:
    """Every setting once: the ones all runs share as a compact list, then a table of the ones that
    differ, each value with the runs that use it (named by variant, run id or testbed)."""
    per_run = [run_settings(r) for r in runs]
    names = list(dict.fromkeys(name for s in per_run for name in s))
    shared, rows = [], []
    for name in names:
        values: dict[str, list[RunHistory]] = {}
        for r, s in zip(runs, per_run, strict=True):
            values.setdefault(s.get(name, "—"), []).append(r)
        if len(values) == 1:
            shared.append(f"<div><span class='muted'>{esc(name)}</span> <code>{esc(next(iter(values)))}</code></div>")
        else:
            rows.append([esc(name), "<br>".join(f"<code>{esc(v)}</code>" for v in values),
                         "<br>".join(esc(_who(rs, runs, beds)) for rs in values.values())])
    out = ""
    if shared:
        out += (f"<h4>{'Shared by all runs' if len(runs) > 1 else 'Settings'}</h4>"
                f"<div class='settings'>{''.join(shared)}</div>")
    if rows:
        out += "<h4>Different between runs</h4>" + table(["setting", "value", "used by"], rows)
    return out


def budget_section(budget: Mapping[str, Any], styles: Mapping[str, Style], *, digits: int) -> str:
    """The budget-matched table: each variant's gain at equal merges made, and paired with the reference."""
    ref = budget["reference"]
    head = ["variant", "runs", "testbeds", *[f"after {b} merges" for b in budget["budgets"]],
            f"area 0–{budget['auc_budget']}", "merges used"]
    rows = []
    for v in budget["variants"]:
        cells = [swatch(v["variant"], styles.get(v["variant"])), esc(v["runs"]), esc(v["testbeds"])]
        cells += [_stacked(v["gain"][b], v.get("vs_reference", {}).get(b), ref, digits) for b in budget["budgets"]]
        cells += [_stacked(v["auc"], v.get("auc_vs_reference"), ref, digits), num(v["merges_used"]["mean"], 1)]
        rows.append(cells)
    return table(head, rows, numeric=(1, 2, len(head) - 1))


def _stacked(gain: Mapping[str, Any], vs: Mapping[str, Any] | None, ref: str, digits: int) -> str:
    """One budget's cell: the gain (± SE), then the paired difference from the reference with its
    interval, then wins/ties/losses and the sign test — three short lines, not three columns."""
    out = mean_se(gain, digits, sign=True)
    if vs is None:
        return out
    head, _, tail = paired_text(vs, digits, sep="\n").partition("\n")
    return (f"{out}<br><span class='vs'>vs {esc(ref)}: {esc(head)}</span>"
            + (f"<br><span class='muted'>{esc(tail)}</span>" if tail else ""))


def early_stop_section(early: Mapping[str, Any], *, digits: int) -> str:
    """The early-stop trade-off table: per threshold, merges saved and final best lost."""
    rows = []
    for row in early["rows"]:
        share = "—" if row["share_saved"] is None else f"{100 * row['share_saved']:.0f}%"
        rows.append([esc(f"{row['threshold']:g}"), esc(f"{row['fired']}/{row['runs']}"),
                     num(row["merges_saved"]["mean"], 1), esc(share), num(row["best_lost"]["mean"], digits),
                     num(row["best_lost"]["high"], digits), esc(row["runs_that_lost"])])
    head = ["threshold", "fired", "merges saved (mean)", "share saved", "best lost (mean)", "max lost",
            "runs that lost"]
    return table(head, rows, numeric=tuple(range(7)))


def correlation_table(points: Sequence[GainPoint]) -> str:
    """Pearson and Spearman correlation of the parents' kinship with the gain and with |gain|."""
    rows = []
    for metric in ("pcc", "cs", "ed"):
        g, a = gain_correlations(points, metric)
        rows.append([
            esc(f"{METRIC_SHORT[metric]} ({METRIC_NAMES[metric]})"), esc(g.n),
            *[esc(f"{signed(r)} (p = {pval(p)})") for r, p in ((g.pearson_r, g.pearson_p), (g.spearman_r, g.spearman_p),
                                                            (a.pearson_r, a.pearson_p), (a.spearman_r, a.spearman_p))],
        ])
    head = ["parents' kinship", "merges", "Pearson r with gain", "Spearman ρ with gain",
            "Pearson r with |gain|", "Spearman ρ with |gain|"]
    return table(head, rows, numeric=(1,))
