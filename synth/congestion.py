"""Router congestion by design unit and signal family, from nextpnr router2's heatmaps.

With ``--router2-heatmap PREFIX`` nextpnr's router2 writes, after each iteration ``i``,
``PREFIX_congestion_by_net_<i>.csv``: one ``net,overuse`` row per net that uses an overused
wire. Which nets those are says which part of the design the router cannot fit: the
measurement behind docs/synthesis.md's congestion figures (until 5 Dec 2026 taken by
hand). :func:`summarize` folds the per-net rows into families: the unit is the net's
hierarchy (``harness.core.bufs``), the family its signal's stem with indices and the
synthesis tools' suffixes removed (``harness.core.bufs.w#_data_rep#``).

Two iterations are kept: :data:`EARLY_ITER` (the overuse the placement left once the
first negotiation has spread the easy nets: what a design change must cut) and the last
(what the router could not resolve, or resolved last). Each also says where on the device
the overuse is (``PREFIX_congestion_by_coordinate_<i>.csv``, :func:`spread`): a hot spot
that a floorplan could relieve, or demand spread over the whole device that only fewer or
shorter wires can. The per-iteration files are removed
once summarised (hundreds of megabytes on a large design).
"""
from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

__all__ = ["HEATMAP_PREFIX", "EARLY_ITER", "family", "clear_heatmaps", "summarize",
           "format_congestion"]

#: folder of the per-iteration files, in the run's folder (nothing else is written there)
HEATMAP_DIR = "congestion"
#: ``--router2-heatmap`` prefix, relative to the run's folder
HEATMAP_PREFIX = f"{HEATMAP_DIR}/router2"
#: the early iteration reported beside the last
EARLY_ITER = 3
#: families kept per iteration (the rest are summed in ``other``)
TOP = 25

_SUFFIX = re.compile(r"(_TRELLIS|_LUT4|_PFUMX|_L6MUX|_CCU2C|_DPR16X4|\$|\[).*$")
_INDEX = re.compile(r"\d+")
_FILE = re.compile(r"_congestion_by_net_(\d+)\.csv$")
#: the coarse map's bins across (west to east) and down (north to south)
MAP_BINS = (8, 6)


def family(net: str) -> tuple[str, str]:
    """``(unit, family)`` of a net name: the hierarchy above the signal, and the unit with
    the signal's stem (indices as ``#``; yosys/nextpnr cell suffixes and bit selects
    dropped). Nets outside a hierarchy (``busy``, ``$PACKER_GND_NET``) are their own unit."""
    parts = net.split(".")
    unit = ".".join(parts[:-1]) if len(parts) > 1 else "(top)"
    unit = _INDEX.sub("#", _SUFFIX.sub("", unit))
    stem = _SUFFIX.sub("", parts[-1]) or parts[-1]
    stem = _INDEX.sub("#", stem)
    return unit, f"{unit}.{stem}" if unit != "(top)" else stem


def _read(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                try:
                    out[row[0]] = out.get(row[0], 0.0) + float(row[1])
                except ValueError:
                    continue        # a header or a torn last line
    return out


def _fold(nets: dict[str, float]) -> dict:
    total = sum(nets.values())
    fam, units, count = Counter(), Counter(), Counter()
    for name, w in nets.items():
        u, f = family(name)
        fam[f] += w
        units[u] += w
        count[f] += 1
    top = fam.most_common(TOP)
    share = (lambda w: round(w / total, 4)) if total else (lambda w: 0.0)
    return {
        "overuse": round(total),
        "nets": len(nets),
        "units": [[u, round(w), share(w)] for u, w in units.most_common()],
        "families": [[f, round(w), share(w), count[f]] for f, w in top],
        "other": round(total - sum(w for _, w in top)),
    }


def _read_grid(path: Path) -> list[list[float]]:
    """router2's overuse per tile: one line per column ``x``, one value per row ``y``."""
    grid = []
    with open(path) as f:
        for line in f:
            vals = []
            for v in line.strip().split(","):
                try:
                    vals.append(float(v))
                except ValueError:
                    continue        # the trailing comma, or a torn last line
            if vals:
                grid.append(vals)
    return grid


def spread(grid: list[list[float]]) -> dict:
    """Where the overuse of one iteration is (``grid[x][y]``, :func:`_read_grid`): the
    share of it in the busiest 1 % and 5 % of the device's tiles (near 0.01 and 0.05 when
    it is even over the device, near 1 on a hot spot), the tiles with any, the centre of
    mass, and a coarse map (:data:`MAP_BINS`: ``map[row][col]``, north to south, west to
    east; ``bin``: the tiles a bin spans in x and y)."""
    w = len(grid)
    h = max((len(c) for c in grid), default=0)
    vals = sorted((v for col in grid for v in col), reverse=True)
    total = sum(vals)
    tiles = w * h
    out = {"tiles": tiles, "tiles_overused": sum(1 for v in vals if v > 0)}
    if not total:
        return {**out, "top1": 0.0, "top5": 0.0, "centre": None, "bin": None, "map": []}
    share = lambda n: round(sum(vals[:max(1, n)]) / total, 4)
    bx, by = -(-w // MAP_BINS[0]), -(-h // MAP_BINS[1])
    cmap = [[0] * -(-w // bx) for _ in range(-(-h // by))]
    cx = cy = 0.0
    for x, col in enumerate(grid):
        for y, v in enumerate(col):
            cmap[y // by][x // bx] += v
            cx += x * v
            cy += y * v
    return {**out, "top1": share(tiles // 100), "top5": share(tiles // 20),
            "centre": [round(cx / total), round(cy / total)], "bin": [bx, by],
            "map": [[round(v) for v in row] for row in cmap]}


def clear_heatmaps(run_dir: str | Path) -> None:
    """Remove the per-iteration files of the run in ``run_dir`` (a stopped run's, or once
    summarised)."""
    shutil.rmtree(Path(run_dir) / HEATMAP_DIR, ignore_errors=True)


def summarize(run_dir: str | Path) -> dict | None:
    """The congestion of the run in ``run_dir`` (its ``HEATMAP_PREFIX`` files), or ``None``
    when router2 wrote none (routing never started). Removes the per-iteration files."""
    d = Path(run_dir) / HEATMAP_DIR
    by_iter = {}
    for p in (d.iterdir() if d.is_dir() else ()):
        m = _FILE.search(p.name)
        if m:
            by_iter[int(m.group(1))] = p
    out = None
    if by_iter:
        last = max(by_iter)
        early = min(EARLY_ITER, last)
        out = {"iterations": last, "early_iteration": early,
               "early": _fold(_read(by_iter[early])), "last": _fold(_read(by_iter[last]))}
        for key, it in (("early", early), ("last", last)):
            coord = by_iter[it].with_name(by_iter[it].name.replace("_by_net_", "_by_coordinate_"))
            if coord.is_file():
                out[key]["spread"] = spread(_read_grid(coord))
    clear_heatmaps(run_dir)
    return out


def format_congestion(c: dict, n: int = 8) -> list[str]:
    """A few lines: the largest families at the early and the last iteration."""
    lines = []
    for key, it in (("early", c["early_iteration"]), ("last", c["iterations"])):
        s = c[key]
        fams = ", ".join(f"{f} {100 * sh:.1f} %" for f, _, sh, _ in s["families"][:n])
        lines.append(f"  router2 overuse at iteration {it}: {s['overuse']} on {s['nets']} nets; "
                     f"{fams}")
        sp = s.get("spread")
        if sp and sp["centre"] is not None:
            lines.append(f"    where: {100 * sp['top5']:.0f} % of it in the busiest 5 % of the "
                         f"tiles ({100 * sp['top1']:.0f} % in 1 %), {sp['tiles_overused']} of "
                         f"{sp['tiles']} tiles overused, centre of mass x {sp['centre'][0]} "
                         f"y {sp['centre'][1]}")
    return lines
