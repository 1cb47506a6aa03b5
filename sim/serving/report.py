"""Outputs of ``fluidnpu compare``: CSV files, matplotlib plots (Agg) and a markdown report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .compare import SCHEDULERS, CompareResult

__all__ = ["write_csv", "write_plots", "write_markdown", "write_all", "table_rows"]

COLORS = {"fcfs": "#7f7f7f", "dynamic": "#1f77b4", "clipper": "#2ca02c", "lazy": "#9467bd", "prema": "#ff7f0e",
          "fluid": "#d62728"}


def _fmt(v, nd=2):
    return "-" if v is None or v != v else f"{v:.{nd}f}"


def table_rows(res: CompareResult):
    """(pattern, load, scheduler, hardware, mean ms [CI], p99 ms, strict SLO attainment, knobs) per cell."""
    for c in res.cells:
        for name in SCHEDULERS:
            e = c["schedulers"][name]
            lo, hi = e["mean_ms_ci95"]
            tag = ""
            if name == c["best_baseline_latency"]:
                tag = "best latency"
            if name == c["best_baseline_slo"]:
                tag = (tag + ", " if tag else "") + "best SLO"
            yield (c["pattern"], f"{c['load']:g}", name, e["hardware"], f"{e['mean_ms']:.2f} [{lo:.2f}, {hi:.2f}]",
                   _fmt(e["p99_ms"], 1), _fmt(e["slo_strict"], 3), json.dumps(e["knobs_latency"]), tag)


def write_csv(res: CompareResult, out: Path) -> list[Path]:
    """``runs.csv`` (every run, grid points included) and ``compare.csv`` (per cell and scheduler, tuned)."""
    runs_p, cmp_p = out / "runs.csv", out / "compare.csv"
    mults = [str(float(m)) for m in res.slo_mults]
    with runs_p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pattern", "load", "seed", "scheduler", "knobs", "hardware", "requests", "mean_ms", "p50_ms",
                    "p95_ms", "p99_ms", "slo_attainment"] + [f"slo_at_{m}x" for m in mults] +
                   ["throughput_rps", "utilisation", "preemptions", "merges", "mean_batch_size", "dropped", "wall_s"])
        for (p, l, s, name, kj, hw), m in sorted(res.runs.items(), key=lambda kv: tuple(map(str, kv[0]))):
            w.writerow([p, l, s, name, kj, hw, m["requests"], m["mean_ms"], m["p50_ms"], m["p95_ms"], m["p99_ms"],
                        m["slo_attainment"]] + [m["slo_at"][k] for k in mults] +
                       [m["throughput_rps"], m["utilisation"], m["preemptions"], m["merges"], m["mean_batch_size"],
                        m["dropped"], f"{m['wall_s']:.4f}"])
    with cmp_p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pattern", "load", "scheduler", "hardware", "knobs_latency", "knobs_slo", "mean_ms", "mean_ms_lo95",
                    "mean_ms_hi95", "p50_ms", "p95_ms", "p99_ms", f"slo_at_{res.strict:g}x", "slo_lo95", "slo_hi95",
                    "slo_attainment", "throughput_rps", "utilisation", "preemptions", "merges", "seeds"])
        for c in res.cells:
            for name in SCHEDULERS:
                e = c["schedulers"][name]
                w.writerow([c["pattern"], c["load"], name, e["hardware"], json.dumps(e["knobs_latency"]),
                            json.dumps(e["knobs_slo"]), e["mean_ms"], *e["mean_ms_ci95"], e["p50_ms"], e["p95_ms"],
                            e["p99_ms"], e["slo_strict"], *e["slo_strict_ci95"], e["slo_attainment"],
                            e["throughput_rps"], e["utilisation"], e["preemptions"], e["merges"],
                            " ".join(map(str, res.spec.seeds))])
    return [runs_p, cmp_p]


def write_plots(res: CompareResult, out: Path) -> list[Path]:
    """latency_cdf.png, latency_vs_load.png, slo_vs_load.png: one panel per arrival pattern."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats = list(res.spec.patterns)
    loads = list(res.spec.loads)
    files = []
    seed0 = res.spec.seeds[0]

    # latency CDF at the highest load (first seed; tuned-for-latency knobs)
    fig, axs = plt.subplots(1, len(pats), figsize=(5.5 * len(pats), 4), squeeze=False)
    for ax, p in zip(axs[0], pats):
        c = next(c for c in res.cells if c["pattern"] == p and c["load"] == max(loads))
        for name in SCHEDULERS:
            e = c["schedulers"][name]
            m = res.runs[(p, c["load"], seed0, name, json.dumps(e["knobs_latency"], sort_keys=True), e["hardware"])]
            q = np.asarray(m["cdf_ms"])
            ax.plot(np.maximum(q, 1e-3), np.linspace(0, 1, q.size), label=f"{name} ({e['hardware']})",
                    color=COLORS[name], lw=2 if name == "fluid" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{p}, load {max(loads):g}, seed {seed0}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    f = out / "latency_cdf.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(f)

    for key, ylabel, fname, log in (("mean_ms", "mean latency (ms)", "latency_vs_load.png", True),
                                    ("slo_strict", f"SLO attainment at {res.strict:g}x", "slo_vs_load.png", False)):
        fig, axs = plt.subplots(1, len(pats), figsize=(5.5 * len(pats), 4), squeeze=False)
        for ax, p in zip(axs[0], pats):
            cs = [c for c in res.cells if c["pattern"] == p]
            for name in SCHEDULERS:
                ys = np.array([c["schedulers"][name][key] for c in cs])
                ci = np.array([c["schedulers"][name][key + "_ci95" if key == "mean_ms" else "slo_strict_ci95"]
                               for c in cs])
                err = np.abs(np.stack([ys - ci[:, 0], ci[:, 1] - ys]))
                ax.errorbar([c["load"] for c in cs], ys, yerr=err, marker="o", capsize=3, color=COLORS[name],
                            label=f"{name} ({cs[0]['schedulers'][name]['hardware']})", lw=2 if name == "fluid" else 1.2)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("load (fraction of batch-1 capacity)")
            ax.set_ylabel(ylabel)
            ax.set_title(p)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / fname
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def write_markdown(res: CompareResult, out: Path, plots: list[Path]) -> Path:
    s = res.summary
    lines = [f"# fluidnpu compare: {res.scenario}", "",
             f"Loads {', '.join(f'{l:g}' for l in res.spec.loads)} (fraction of the NPU's batch-1 capacity), "
             f"patterns {', '.join(res.spec.patterns)}, seeds {', '.join(map(str, res.spec.seeds))}, "
             f"{res.spec.requests} requests per run; spiking = MMPP2 with high/low rate ratio "
             f"{res.spec.spike_ratio:g} and mean dwell {res.spec.spike_dwell_s[0]:g} s / "
             f"{res.spec.spike_dwell_s[1]:g} s. Baselines on rbatch hardware with knobs tuned per cell over a "
             f"grid (chosen on the evaluation seeds); fluid on fluid hardware with default knobs. "
             f"Service times: the policy mapper's latency tables (cycle model). {res.elapsed_s:.0f} s wall.", "",
             "## Summary", "",
             f"* avg_latency_ratio (best baseline's mean latency / fluid's, geometric mean over cells): "
             f"**{s['avg_latency_ratio']:.2f}x** (95 % CI over seeds {s['avg_latency_ratio_ci95'][0]:.2f}-"
             f"{s['avg_latency_ratio_ci95'][1]:.2f}; per seed {', '.join(f'{v:.2f}' for v in s['avg_latency_ratio_per_seed'])}); "
             f"paper: 1.97x.",
             f"* tail_slo_ratio (fluid's SLO attainment at {res.strict:g}x / the best baseline's, "
             f"{s['tail_cell']['pattern']} at load {s['tail_cell']['load']:g}): "
             f"**{_fmt(s['tail_slo_ratio'])}x** ({_fmt(s['tail_cell']['fluid_attainment'], 3)} vs "
             f"{_fmt(s['tail_cell']['best_baseline_attainment'], 3)} for {s['tail_cell']['best_baseline']}; 95 % CI "
             f"{_fmt(s['tail_slo_ratio_ci95'][0])}-{_fmt(s['tail_slo_ratio_ci95'][1])}); paper: 6.7x.",
             f"* Ablation (mean latency, geometric mean over cells): scheduler alone (fluid on rbatch vs the best "
             f"baseline) {s['scheduler_only_avg_latency_ratio']:.2f}x; hardware alone (the best baseline on fluid "
             f"hardware) {s['hardware_only_avg_latency_ratio']:.2f}x.", ""]
    lines += ["## Per cell", "",
              "| pattern | load | scheduler | hardware | mean ms [95 % CI] | p99 ms | "
              f"SLO at {res.strict:g}x | knobs (latency) | |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table_rows(res):
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    lines += ["", "## Chosen knobs", "", "| pattern | load | scheduler | for mean latency | for SLO attainment |",
              "|---|---|---|---|---|"]
    for c in res.cells:
        for name in SCHEDULERS:
            e = c["schedulers"][name]
            lines.append(f"| {c['pattern']} | {c['load']:g} | {name} | `{json.dumps(e['knobs_latency'])}` | "
                         f"`{json.dumps(e['knobs_slo'])}` |")
    lines += ["", "## Ablation per cell", "", "| pattern | load | run | mean ms | SLO at strictest |", "|---|---|---|---|---|"]
    for c in res.cells:
        for k, v in c["ablation"].items():
            lines.append(f"| {c['pattern']} | {c['load']:g} | {k} | {v['mean_ms']:.2f} | {v['slo_strict']:.3f} |")
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
        js.write_text(json.dumps(res.to_json(), indent=1, default=float) + "\n")
    return files
