"""Where a placement stretches the wires: half-perimeter wirelength (HPWL, in tiles) of a
placed nextpnr JSON by design unit or signal family (the names of
:func:`fluidnpu.synth.congestion.family`).

A routed design's wire use by family is in ``--congestion``'s report; this reads a
placement that has not routed (or will not): nextpnr run with ``--no-route --write
placed.json``. Each net bit counts once: the bounding box of the tiles of the cells it
connects (driver and sinks). docs/synthesis.md (6 Dec 2026, afternoon) has the 16 x 8's.

    .venv/bin/python tools/wirelength.py placed.json [--by unit] [--top 30] [--json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from fluidnpu.synth.congestion import family
from fluidnpu.synth.ctrlsets import top_module

_BEL = re.compile(r"X(\d+)/Y(\d+)/")


def wirelength(design: dict, *, by: str = "family") -> dict[str, dict]:
    """``{name: {"hpwl", "nets", "sinks"}}`` by ``by`` ("family" or "unit"), largest first,
    from a placed design (cells with ``NEXTPNR_BEL``). Nets on fewer than two placed cells
    (constants, unplaced ends) count nothing."""
    if by not in ("family", "unit"):
        raise ValueError(f"by = {by!r}: must be 'family' or 'unit'")
    mod = top_module(design)
    tiles: dict[int, list[tuple[int, int]]] = {}
    for c in mod.get("cells", {}).values():
        m = _BEL.match(c.get("attributes", {}).get("NEXTPNR_BEL", ""))
        if m:
            xy = (int(m[1]), int(m[2]))
            for bits in c["connections"].values():
                for b in bits:
                    if isinstance(b, int):
                        tiles.setdefault(b, []).append(xy)
    if not tiles:
        raise ValueError("no placed cells (NEXTPNR_BEL): write the design after placement, "
                         "nextpnr --no-route --write placed.json")
    hp, nets, sinks, seen = Counter(), Counter(), Counter(), set()
    for name, info in mod.get("netnames", {}).items():
        for b in info["bits"]:
            if not isinstance(b, int) or b in seen or len(tiles.get(b, ())) < 2:
                continue
            seen.add(b)
            xs, ys = zip(*tiles[b])
            unit, fam = family(name)
            key = fam if by == "family" else unit
            hp[key] += max(xs) - min(xs) + max(ys) - min(ys)
            nets[key] += 1
            sinks[key] += len(xs) - 1
    return {k: {"hpwl": v, "nets": nets[k], "sinks": sinks[k]} for k, v in hp.most_common()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("placed", type=Path, help="nextpnr JSON written after placement")
    ap.add_argument("--by", choices=("family", "unit"), default="family")
    ap.add_argument("--top", type=int, default=30, help="rows printed (default 30)")
    ap.add_argument("--json", action="store_true", help="print every row as one JSON object")
    a = ap.parse_args(argv)
    if a.top < 1:
        ap.error(f"--top {a.top}: must be at least 1")
    try:
        design = json.loads(a.placed.read_text())
        rows = wirelength(design, by=a.by)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        print(f"error: {a.placed}: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(rows))
        return 0
    total = sum(r["hpwl"] for r in rows.values())
    print(f"total HPWL {total} tiles, {sum(r['nets'] for r in rows.values())} net bits")
    for k, r in list(rows.items())[:a.top]:
        print(f"{r['hpwl']:9d} {100 * r['hpwl'] / total:5.1f} %  {r['nets']:6d} nets  "
              f"{r['sinks']:7d} sinks  {r['hpwl'] / r['nets']:5.1f} a net  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
