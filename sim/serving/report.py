"""Outputs of ``fluidnpu compare``: CSV files, plots (:mod:`.plots`) and a markdown report."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .compare import CompareResult
from .compare_spec import HARDWARE, PREEMPTIVE, SCHEDULERS, THROUGHPUT
from .plots import write_plots

__all__ = ["write_csv", "write_plots", "write_markdown", "write_all", "table_rows", "summary_rows", "MEANINGS",
           "clean_json"]

#: what each summary figure means (report, docs and the CLI use the same words)
MEANINGS = {
    "system": "fluid scheduler on fluid hardware against each baseline on rbatch hardware: what adopting the "
              "whole design gives",
    "scheduler_only": "every scheduler on the same hardware (rbatch and fluid, each cell and hardware a pair): "
                      "the fluid scheduler's own gain",
    "hardware_only": "the same scheduler on fluid over on rbatch hardware: the hardware's own gain",
    "avg_latency_ratio": "baseline's mean latency / fluid's, geometric mean over cells (loads x patterns)",
    "tail_ratio": "fluid's SLO attainment / the baseline's, on the devices' own SLOs, scored models weighted "
                  "equally, in the tail cell",
    "tail_p99_ratio": "baseline's p99 latency / fluid's, geometric mean over the scored models, in the tail cell",
}
_CLASS_LABEL = {"vs_throughput": f"vs throughput-maximising (best of {', '.join(THROUGHPUT)})",
                "vs_preemptive": f"vs preemptive ({', '.join(PREEMPTIVE)})", "vs_best": "vs best of all"}


def _fmt(v, nd=2):
    return "-" if v is None or v != v else f"{v:.{nd}f}"


def _ratio(d: dict, key: str) -> str:
    v, ci = d.get(key), d.get(key + "_ci95")
    if v is None:
        return "unattainable"
    return f"{v:.2f}x [{_fmt(ci[0])}-{_fmt(ci[1])}]"


def summary_rows(res: CompareResult):
    """(comparison, figure, vs_throughput, vs_preemptive, vs_best) rows of the summary table."""
    s = res.summary
    sets = [("system", s["system"]), ("scheduler only", s["scheduler_only"])] + \
        [(f"scheduler only, {hw} hw", s["scheduler_only"]["by_hardware"][hw]) for hw in HARDWARE]
    for label, d in sets:
        for key, what in (("avg_latency_ratio", "mean latency"), ("tail_ratio", "tail: SLO attainment"),
                          ("tail_p99_ratio", "tail: p99 latency")):
            yield (label, what) + tuple(_ratio(d[c], key) for c in ("vs_throughput", "vs_preemptive", "vs_best"))


def table_rows(res: CompareResult, intervals: bool = True):
    """Per cell and scheduler: pattern, load, scheduler, then per hardware mean ms [CI] and SLO attainment,
    the p99 on the system's hardware (baselines rbatch, fluid fluid), and whether it is the best
    throughput-maximising baseline on rbatch hardware for latency and/or the tail."""
    for c in res.cells:
        for name in SCHEDULERS:
            cols = []
            for hw in HARDWARE:
                e = c["hardware"][hw][name]
                lo, hi = e["mean_ms_ci95"]
                cols += [f"{e['mean_ms']:.2f} [{lo:.2f}, {hi:.2f}]" if intervals else f"{e['mean_ms']:.2f}",
                         _fmt(e["attainment"], 3)]
            tags = [what for what in ("latency", "tail") if c["best"]["rbatch"]["vs_throughput"][what] == name]
            yield (c["pattern"], f"{c['load']:g}", name, *cols, _fmt(c["schedulers"][name]["p99_ms"], 1),
                   ", ".join(tags))


def clean_json(x):
    """``x`` with non-finite floats as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_csv(res: CompareResult, out: Path) -> list[Path]:
    """``runs.csv`` (every run, grid points included) and ``compare.csv`` (per cell, hardware and scheduler)."""
    runs_p, cmp_p = out / "runs.csv", out / "compare.csv"
    models, mults = res.models, [f"{m:g}" for m in res.spec.sweep_mults]
    with runs_p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pattern", "load", "seed", "scheduler", "knobs", "hardware", "requests", "dropped", "mean_ms",
                    "p50_ms", "p95_ms", "p99_ms", "attainment_req"] +
                   [f"{m}_{k}" for m in models for k in ("requests", "p99_ms", "attainment")] +
                   [f"violation_at_{x}x" for x in mults] +
                   ["throughput_rps", "utilisation", "preemptions", "merges", "mean_batch_size", "wall_s"])
        for (p, l, s, name, kj, hw), m in sorted(res.runs.items(), key=lambda kv: tuple(map(str, kv[0]))):
            pm = m["per_model"]
            viol = [sum(pm[k]["violation_at"][i] for k in pm) / max(1, len(pm)) for i in range(len(mults))]
            w.writerow([p, l, s, name, kj, hw, m["requests"], m["dropped"], m["mean_ms"], m["p50_ms"], m["p95_ms"],
                        m["p99_ms"], m["attainment_req"]] +
                       [pm[k][f] if k in pm else "" for k in models for f in ("requests", "p99_ms", "attainment")] +
                       viol + [m["throughput_rps"], m["utilisation"], m["preemptions"], m["merges"],
                               m["mean_batch_size"], f"{m['wall_s']:.4f}"])
    with cmp_p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pattern", "load", "hardware", "scheduler", "knobs_latency", "knobs_slo", "mean_ms", "mean_ms_lo95",
                    "mean_ms_hi95", "p50_ms", "p95_ms", "p99_ms", "attainment", "attainment_lo95", "attainment_hi95",
                    "attainment_req"] + [f"{m}_{k}" for m in models for k in ("p99_ms", "attainment")] +
                   ["throughput_rps", "utilisation", "preemptions", "merges", "seeds"])
        for c in res.cells:
            for hw in HARDWARE:
                for name in SCHEDULERS:
                    e = c["hardware"][hw][name]
                    pm = e["per_model"]
                    w.writerow([c["pattern"], c["load"], hw, name, json.dumps(e["knobs_latency"]),
                                json.dumps(e["knobs_slo"]), e["mean_ms"], *e["mean_ms_ci95"], e["p50_ms"],
                                e["p95_ms"], e["p99_ms"], e["attainment"], *e["attainment_ci95"], e["attainment_req"]] +
                               [pm[k][f] if k in pm else "" for k in models for f in ("p99_ms", "attainment")] +
                               [e["throughput_rps"], e["utilisation"], e["preemptions"], e["merges"],
                                " ".join(map(str, res.spec.seeds))])
    return [runs_p, cmp_p]


def _md_table(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]


def _setup(res: CompareResult) -> str:
    sp = res.spec
    return (f"Loads {', '.join(f'{l:g}' for l in sp.loads)} (fraction of the NPU's batch-1 capacity), patterns "
            f"{', '.join(sp.patterns)}, seeds {', '.join(map(str, sp.seeds))} ({len(sp.seeds)}; the first "
            f"{sp.tune_seeds} tune the baselines' knobs per cell and hardware), {sp.requests} requests per run. "
            f"spiking = a two-state MMPP per device (high/low rate {sp.spike_ratio:g}, mean dwell "
            f"{sp.spike_dwell_s[0]:g} s / {sp.spike_dwell_s[1]:g} s); correlated = the same with one state path "
            f"for all devices. Every scheduler runs on rbatch and on fluid hardware; service times from the "
            f"policy mapper's latency tables (cycle model). Intervals: 95 % Student's t over seeds; a ratio's "
            f"point estimate is the geometric mean of its per-seed values. {len(res.runs)} runs, "
            f"{res.elapsed_s:.0f} s wall.")


def _tail_section(res: CompareResult) -> list[str]:
    s, tc = res.summary, res.summary["tail_cell"]
    cell = next(c for c in res.cells if c["tail_cell"])
    lines = ["## Tails per model", "",
             f"Tail cell: **{tc['pattern']} at load {tc['load']:g}** (the burstiest pattern at the highest load). "
             f"An SLO is scored when some scheduler meets it for at least {res.spec.attainable:.0%} of the model's "
             f"requests at load {res.spec.probe_load:g} (steady); otherwise it is **unattainable** and left out of "
             f"the tail figures.", ""]
    rows = [(m, "attainable" if a["attainable"] else "**unattainable**", _fmt(a["best"], 3), a["by"])
            for m, a in res.attainable.items()]
    lines += _md_table(("model", "SLO", f"best attainment at load {res.spec.probe_load:g}", "by"), rows) + [""]
    if s["tail_unattainable"]:
        lines += ["**No model's SLO is attainable: the tail figures are not scored.**", ""]
    who = [("fluid", "fluid"), ("fluid", "rbatch")] + \
        sorted({(cell["best"]["rbatch"][c]["tail"], "rbatch") for c in ("vs_throughput", "vs_preemptive")}) + \
        sorted({(cell["best"]["fluid"][c]["tail"], "fluid") for c in ("vs_throughput", "vs_preemptive")})
    rows = []
    for m in res.models:
        rows.append([m] + [f"{_fmt(cell['hardware'][hw][n]['per_model'].get(m, {}).get('p99_ms'), 1)} / "
                           f"{_fmt(cell['hardware'][hw][n]['per_model'].get(m, {}).get('attainment'), 3)}"
                           for n, hw in who])
    rows.append(["**models equally weighted** (scored)"] +
                [f"{_fmt(cell['hardware'][hw][n]['attainment'], 3)}" for n, hw in who])
    rows.append(["request-weighted (all)"] + [f"{_fmt(cell['hardware'][hw][n]['attainment_req'], 3)}" for n, hw in who])
    lines += ["p99 latency (ms) / SLO attainment per model, tuned-for-SLO knobs:", ""]
    lines += _md_table(["model"] + [f"{n} @ {hw}" for n, hw in who], rows) + [""]
    mults = res.spec.sweep_mults
    rows = [[f"{n} @ {hw}"] + [_fmt(v, 3) for v in cell["hardware"][hw][n]["violation_sweep"]]
            for hw in HARDWARE for n in SCHEDULERS]
    lines += ["SLO sweep in the tail cell: violation rate (models equally weighted) when the SLO is m x the "
              "model's isolated batch-1 latency on rbatch hardware:", ""]
    lines += _md_table(["scheduler @ hardware"] + [f"{m:g}x" for m in mults], rows) + [""]
    return lines


def write_markdown(res: CompareResult, out: Path, plots: list[Path]) -> Path:
    s = res.summary
    lines = [f"# fluidnpu compare: {res.scenario}", "", _setup(res), "", "## Summary: two comparisons", ""]
    lines += [f"* **system**: {MEANINGS['system']};", f"* **scheduler only**: {MEANINGS['scheduler_only']};",
              f"* *mean latency*: {MEANINGS['avg_latency_ratio']};", f"* *tail: SLO attainment* (the headline tail "
              f"figure): {MEANINGS['tail_ratio']};", f"* *tail: p99 latency*: {MEANINGS['tail_p99_ratio']}.",
              "", "Above 1 fluid is better. Ratio [95 % interval]:", ""]
    lines += _md_table(("comparison", "figure", _CLASS_LABEL["vs_throughput"], _CLASS_LABEL["vs_preemptive"],
                        _CLASS_LABEL["vs_best"]), list(summary_rows(res))) + [""]
    h = s["hardware_only"]
    lines += [f"Hardware alone ({MEANINGS['hardware_only']}): fluid scheduler {_ratio(h['fluid'], 'avg_latency_ratio')} "
              f"mean latency, {_ratio(h['fluid'], 'tail_ratio')} tail; best baseline "
              f"{_ratio(h['best_baseline'], 'avg_latency_ratio')} mean latency, "
              f"{_ratio(h['best_baseline'], 'tail_ratio')} tail. Paper: {s['paper']['avg_latency_ratio']}x mean "
              f"latency, {s['paper']['tail_ratio']}x tail SLO attainment (against throughput-maximising systems).", ""]
    lines += _tail_section(res)
    lines += ["## Per cell", "", "Mean latency in ms [95 % interval] and SLO attainment (own SLOs, scored models "
              "equally weighted) on each hardware; p99 on the system's hardware (baselines rbatch, fluid fluid).", ""]
    lines += _md_table(("pattern", "load", "scheduler", "mean @ rbatch", "SLO @ rbatch", "mean @ fluid",
                        "SLO @ fluid", "p99 ms", "best throughput-maximising (rbatch)"), list(table_rows(res))) + [""]
    lines += ["## Chosen knobs", ""]
    rows = [(c["pattern"], f"{c['load']:g}", hw, n, f"`{json.dumps(c['hardware'][hw][n]['knobs_latency'])}`",
             f"`{json.dumps(c['hardware'][hw][n]['knobs_slo'])}`")
            for c in res.cells for hw in HARDWARE for n in SCHEDULERS if res.spec.grid[n] != [{}]]
    lines += _md_table(("pattern", "load", "hardware", "scheduler", "for mean latency", "for SLO attainment"), rows)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    f = out / "report.md"
    f.write_text("\n".join(lines))
    return f


def write_all(res: CompareResult, out) -> dict:
    """Every file of a comparison into ``out``, published together (written into a
    staging folder first, then moved in with compare.manifest.json written last:
    :func:`fluidnpu.outputs.staged_output`), so an interrupted run leaves the old
    result or the new one, never a mix."""
    from fluidnpu.outputs import staged_output
    with staged_output(out, "compare") as st:
        csvs = write_csv(res, st.path)
        plots = write_plots(res, st.path)
        md = write_markdown(res, st.path, plots)
        js = st.path / "compare.json"
        files = {"csv": [str(st.final(p)) for p in csvs], "plots": [str(st.final(p)) for p in plots],
                 "report": str(st.final(md)), "json": str(st.final(js))}
        res.files = files
        js.write_text(json.dumps(clean_json(res.to_json()), indent=1) + "\n")
    return files
