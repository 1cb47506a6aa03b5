"""Sweep results: the append-only record file, the table (CSV, Parquet) and the Pareto plots.

``results.jsonl`` holds one JSON object per finished task, written in one ``write`` of
a whole line, flushed and fsynced, so a crash leaves at most an unfinished last line;
:class:`ResultStore` drops such a line (it is rewritten away, atomically) before
appending. Failed tasks go to ``errors.jsonl`` and are run again by the next run.
The table is rebuilt from the records and replaced atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from fluidnpu.outputs import atomic_write, staged_output

__all__ = ["ResultStore", "table_rows", "write_outputs", "write_table", "markdown_table", "pareto_front",
           "plot_pareto", "MAXIMISE"]

#: columns where larger is better (everything else plotted on y is minimised)
MAXIMISE = ("slo_attainment", "slo_at_", "throughput_rps", "npu_util", "mac_util", "perf_b", "fmax_mhz")


class ResultStore:
    """``results.jsonl``: one record per finished task; appends are whole lines, fsynced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.errors = self.path.with_name("errors.jsonl")
        self._repair()

    def _repair(self) -> None:
        """Drop an unfinished last line (a crash in the middle of a write)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        atomic_write(self.path, data[:data.rfind(b"\n") + 1])

    def records(self) -> list[dict]:
        out = []
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and rec.get("ok") and "id" in rec:
                    out.append(rec)
        return out

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records()}

    def _append(self, path: Path, rec: dict) -> None:
        line = json.dumps(rec, default=_jsonable) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def append(self, rec: dict) -> None:
        self._append(self.path, rec)

    def append_error(self, rec: dict) -> None:
        self._append(self.errors, rec)


def _jsonable(v):
    try:
        import numpy as np
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def table_rows(sweep, records: list[dict]) -> list[dict]:
    """One row per finished point of ``sweep`` (in sweep order): parameters, then metrics.

    A point whose synthesis has not finished yet has no row (no half rows)."""
    by_id = {r["id"]: r for r in records}
    rows = []
    for p in sweep.points:
        rec = by_id.get(p.id)
        if rec is None:
            continue
        row = {"point": p.index, **p.params}
        if p.synth_id is not None:
            srec = by_id.get(p.synth_id)
            if srec is None:
                continue
            row.update(srec["metrics"])
        row.update(rec["metrics"])
        fmax = row.get("fmax_mhz")
        if _num(fmax) and fmax > 0:        # latency at the clock the design reached
            for k in [k for k in row if k.startswith("perf_b") and k.endswith("_cycles")]:
                row[k[:-len("_cycles")] + "_ms_at_fmax"] = row[k] / (fmax * 1e3)
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    seen = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def write_table(rows: list[dict], out: Path) -> list[Path]:
    """``results.csv`` (and ``results.parquet`` when pyarrow is installed), replaced atomically."""
    cols = _columns(rows)
    files = []

    def w_csv(fb):
        f = io.TextIOWrapper(fb, encoding="utf-8", newline="")
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in cols})
        f.flush()
        f.detach()              # the file stays open for atomic_write to sync and rename
    atomic_write(out / "results.csv", w_csv)
    files.append(out / "results.csv")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return files

    def w_pq(f):
        data = {}
        for k in cols:
            vals = [r.get(k) for r in rows]
            kinds = {type(v) for v in vals if v is not None}
            if kinds - {int, float, bool, str} or (str in kinds and len(kinds) > 1) or \
                    (bool in kinds and len(kinds) > 1):
                vals = [None if v is None else str(v) for v in vals]
            elif kinds == {int, float}:
                vals = [None if v is None else float(v) for v in vals]
            data[k] = vals
        pq.write_table(pa.table(data), f)
    atomic_write(out / "results.parquet", w_pq)
    files.append(out / "results.parquet")
    return files


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def pareto_front(points: list[tuple[float, float]], maximise_y: bool) -> list[int]:
    """Indices of the points not dominated (smaller x is better; y smaller, or larger if ``maximise_y``)."""
    def better_or_equal_y(a, b):
        return a >= b if maximise_y else a <= b
    idx = [i for i, (x, y) in enumerate(points) if _num(x) and _num(y)]
    front = []
    for i in idx:
        xi, yi = points[i]
        dominated = False
        for j in idx:
            if j == i:
                continue
            xj, yj = points[j]
            if xj <= xi and better_or_equal_y(yj, yi) and (xj < xi or yj != yi):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _maximise(col: str) -> bool:
    return col.startswith(MAXIMISE)


def plot_pareto(rows: list[dict], x: str, y: str, out: Path, title: str = "") -> Path | None:
    """Scatter of ``y`` against ``x`` per scheduler, with each scheduler's Pareto front; PNG path.

    One panel per scenario (or model) when the rows have several."""
    usable = [r for r in rows if _num(r.get(x)) and _num(r.get(y))]
    if not usable:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facet_key = next((k for k in ("scenario", "model") if len({str(r.get(k)) for r in usable}) > 1), None)
    facets: dict[str, list[dict]] = {}
    for r in usable:
        facets.setdefault(str(r.get(facet_key)) if facet_key else "", []).append(r)
    group_key = "scheduler" if any("scheduler" in r for r in usable) else None
    names = sorted({str(r.get(group_key, "all")) if group_key else "all" for r in usable})
    maxi = _maximise(y)
    n = len(facets)
    fig, axes = plt.subplots(1, n, figsize=(2.0 + 5.0 * n, 4.6), dpi=110, sharey=True, squeeze=False)
    markers = "osD^v<>PX*"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    log_y = False
    if not maxi and y.endswith("_ms"):
        vals = [r[y] for r in usable]
        log_y = min(vals) > 0 and max(vals) / min(vals) > 50
    for ax, (fname, frows) in zip(axes[0], sorted(facets.items())):
        for gi, g in enumerate(names):
            rs = [r for r in frows if (str(r.get(group_key, "all")) if group_key else "all") == g]
            if not rs:
                continue
            pts = [(r[x], r[y]) for r in rs]
            color = colors[gi % len(colors)]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[gi % len(markers)], color=color,
                       label=g, alpha=0.8, s=36)
            front = pareto_front(pts, maxi)
            if len(front) > 1:
                ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=color,
                        drawstyle="steps-post", alpha=0.6, linewidth=1.2)
        overall = pareto_front([(r[x], r[y]) for r in frows], maxi)
        labelled = set()
        for i in overall:
            r = frows[i]
            lab = str(r.get("label", ""))
            if lab in labelled:
                continue
            labelled.add(lab)
            ax.annotate(lab, (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7, alpha=0.85)
        ax.set_xlabel(x)
        if facet_key:
            ax.set_title(f"{facet_key} {fname}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if log_y:
            ax.set_yscale("log")
    axes[0][0].set_ylabel(y + (" (higher is better)" if maxi else " (lower is better)"))
    axes[0][-1].legend(fontsize=7, title=group_key or None, title_fontsize=8)
    fig.suptitle(title or f"Pareto front: {y} against {x}", fontsize=10)
    fig.tight_layout()
    path = out / f"pareto_{y}_vs_{x}.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path


#: (column, heading, format) of the markdown summary, in order, where present
_MD_COLUMNS = (
    ("luts", "LUTs", "util:lut_util"), ("ffs", "FFs", "util:ff_util"), ("dsps", "DSPs", "util:dsp_util"),
    ("brams", "BRAMs", "util:bram_util"), ("fmax_mhz", "Fmax MHz", "{:.1f}"), ("fits", "fits", "bool"),
    ("synth_s", "synth s", "{:.0f}"),
    ("perf_b1_cycles", "b1 cycles", "{}"), ("perf_b1_util", "b1 util", "{:.3f}"),
    ("perf_b1_ms_at_fmax", "b1 ms at Fmax", "{:.2f}"),
    ("perf_b8_util", "b8 util", "{:.3f}"), ("perf_b8_ms_at_fmax", "b8 ms at Fmax", "{:.2f}"),
    ("mean_ms", "mean ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
    ("slo_attainment", "SLO att.", "{:.3f}"), ("throughput_rps", "req/s", "{:.1f}"),
)


def markdown_table(sweep, rows: list[dict]) -> str:
    """The varying parameters and the main results as a markdown table (results.md)."""
    params = [k for k in sweep.varying if k not in ("tc", "tp", "mem_bytes", "lanes") or "label" not in sweep.varying]
    cols = [(k, k, "{}") for k in params] + [c for c in _MD_COLUMNS if any(c[0] in r for r in rows)]
    out = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for k, _, fmt in cols:
            v = r.get(k)
            if v is None or v == "":
                cells.append("-")
            elif fmt == "bool":
                cells.append({True: "yes", False: "**no**"}.get(v, str(v)))
            elif fmt.startswith("util:"):
                u = r.get(fmt[5:])
                cells.append(f"{v} ({100 * u:.0f}%)" if _num(u) else str(v))
            elif _num(v) or isinstance(v, (int, float)):
                cells.append(fmt.format(v) if _num(v) else str(v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_outputs(sweep, out: Path, *, plots: bool = True, log=None) -> tuple[Path | None, list[Path], int]:
    """Rebuild the table and the plots from the records; ``(csv path, plot paths, rows)``."""
    say = log or (lambda m: None)
    rows = table_rows(sweep, ResultStore(out / "results.jsonl").records())
    # published together with sweep.manifest.json (which says whether every point is done)
    with staged_output(out, "sweep") as st:
        st.extra = {"complete": len(rows) == len(sweep.points), "points": len(sweep.points), "done": len(rows)}
        files = [st.final(f) for f in write_table(rows, st.path)]
        atomic_write(st.path / "results.md", markdown_table(sweep, rows))
        pngs = []
        if plots and rows:
            for x in sweep.plot["x"]:
                for y in sweep.plot["y"]:
                    if not any(_num(r.get(x)) for r in rows) or not any(_num(r.get(y)) for r in rows):
                        continue
                    p = plot_pareto(rows, x, y, st.path, f"{sweep.name}: {y} against {x}")
                    if p is not None:
                        pngs.append(st.final(p))
    say(f"table: {', '.join(str(f) for f in files)} ({len(rows)} of {len(sweep.points)} points)"
        + (f"; plots: {', '.join(p.name for p in pngs)}" if pngs else ""))
    return files[0], pngs, len(rows)
