"""Plots of ``fluidnpu compare`` (matplotlib, Agg): latency CDF, latency and SLO attainment vs
load, and the SLO sweep. Baselines are drawn on rbatch hardware, ``fluid`` on fluid hardware
(solid) and on rbatch hardware (dashed: the scheduler alone)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .compare_spec import SCHEDULERS

__all__ = ["write_plots", "COLORS"]

COLORS = {"fcfs": "#7f7f7f", "dynamic": "#1f77b4", "clipper": "#2ca02c", "lazy": "#9467bd", "prema": "#ff7f0e",
          "fluid": "#d62728"}


def _lines(cell):
    """(label, entry, style) per line: the system view, plus fluid on rbatch hardware."""
    out = [(f"{n} (rbatch)", cell["hardware"]["rbatch"][n], "-") for n in SCHEDULERS if n != "fluid"]
    out.append(("fluid (fluid)", cell["hardware"]["fluid"]["fluid"], "-"))
    out.append(("fluid (rbatch)", cell["hardware"]["rbatch"]["fluid"], "--"))
    return out


def _name(label: str) -> str:
    return label.split(" ")[0]


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(res, out: Path) -> list[Path]:
    """latency_cdf.png, latency_vs_load.png, slo_vs_load.png, slo_sweep.png: one panel per pattern."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pats, top = list(res.spec.patterns), max(res.spec.loads)
    seed0 = res.spec.seeds[0]
    files = []

    def panels():
        fig, axs = plt.subplots(1, len(pats), figsize=(5.5 * len(pats), 4), squeeze=False)
        return fig, axs[0]

    # latency CDF at the highest load (first seed; latency-tuned knobs)
    fig, axs = panels()
    for ax, p in zip(axs, pats):
        c = next(c for c in res.cells if c["pattern"] == p and c["load"] == top)
        for label, e, ls in _lines(c):
            kj = json.dumps(e["knobs_latency"], sort_keys=True)
            q = np.asarray(res.runs[(p, top, seed0, _name(label), kj, e["hardware"])]["cdf_ms"])
            ax.plot(np.maximum(q, 1e-3), np.linspace(0, 1, q.size), ls, label=label, color=COLORS[_name(label)],
                    lw=2 if _name(label) == "fluid" else 1.2)
        ax.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of requests", title=f"{p}, load {top:g}, "
               f"seed {seed0}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    files.append(_save(fig, out / "latency_cdf.png", plt))

    for key, ylabel, fname, log in (("mean_ms", "mean latency (ms)", "latency_vs_load.png", True),
                                    ("attainment", "SLO attainment, own SLOs (models equally weighted)",
                                     "slo_vs_load.png", False)):
        fig, axs = panels()
        for ax, p in zip(axs, pats):
            cs = [c for c in res.cells if c["pattern"] == p]
            for i, (label, _, ls) in enumerate(_lines(cs[0])):
                es = [_lines(c)[i][1] for c in cs]
                ys = np.array([e[key] for e in es], dtype=float)
                ci = np.array([e[key + "_ci95"] for e in es], dtype=float)
                err = np.abs(np.stack([ys - ci[:, 0], ci[:, 1] - ys]))
                ax.errorbar([c["load"] for c in cs], ys, yerr=err, marker="o", capsize=3, ls=ls,
                            color=COLORS[_name(label)], label=label, lw=2 if _name(label) == "fluid" else 1.2)
            if log:
                ax.set_yscale("log")
            ax.set(xlabel="load (fraction of batch-1 capacity)", ylabel=ylabel, title=p)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        files.append(_save(fig, out / fname, plt))

    # SLO sweep at the highest load: violation rate vs multiplier of the isolated batch-1 latency
    fig, axs = panels()
    mults = list(res.spec.sweep_mults)
    for ax, p in zip(axs, pats):
        c = next(c for c in res.cells if c["pattern"] == p and c["load"] == top)
        for label, e, ls in _lines(c):
            ys = np.maximum(np.asarray(e["violation_sweep"], dtype=float), 1e-4)
            ax.plot(mults, ys, ls, marker=".", label=label, color=COLORS[_name(label)],
                    lw=2 if _name(label) == "fluid" else 1.2)
        ax.set(xscale="log", yscale="log", xlabel="SLO = multiplier x isolated batch-1 latency (rbatch)",
               ylabel="violation rate (models equally weighted)", title=f"{p}, load {top:g}")
        ax.set_xticks(mults, [f"{m:g}" for m in mults])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    files.append(_save(fig, out / "slo_sweep.png", plt))
    return files
