"""Flip-flop control sets of an ECP5 netlist, and the logic tiles they need at least.

nextpnr-ecp5 places the eight flip-flops of a logic tile (PLC) on one clock and one LSR
net, and the two flip-flops of a slice on one CE net (``slices_compatible`` in its
ecp5/arch_place.cc). So flip-flops with different LSR nets never share a tile, and a
netlist whose control sets need nearly every tile cannot be legalised however the LUTs
fit: on the 16 x 8 of d64e533, yosys had given 2,938 single bits a private LSR net, the
flip-flops needed at least 9,943 of the 85F's 10,455 tiles, and neither placer finished
(docs/synthesis.md). The bound is counted before nextpnr runs, in seconds.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["FFS_PER_TILE", "WARN_SHARE", "ff_control_sets", "describe_control_sets", "top_module"]

FFS_PER_TILE = 8        #: flip-flops of an ECP5 logic tile (four slices of two)
_FFS_PER_SLICE = 2
#: the share of the device's tiles above which the control sets alone make placement
#: unlikely to legalise: the 16 x 8 that neither placer finished needed 95 %; the 8 x 8
#: that placed in minutes 52 % (both with the resets on LSR)
WARN_SHARE = 0.9


def ff_control_sets(netlist: str | Path | dict) -> dict:
    """Control sets of the ``TRELLIS_FF`` cells in a yosys JSON netlist (its top module).

    Returns ``ffs``; ``lsr_nets`` and ``ce_nets`` (distinct non-constant nets);
    ``private_lsr_ffs`` (flip-flops on an LSR net that drives at most two); and
    ``min_tiles``: per (clock, LSR) group, its flip-flops in slices of one CE and those
    slices four to a tile, summed. A lower bound: it ignores the LUTs, carry chains and
    LUT RAMs the tiles also hold."""
    d = netlist if isinstance(netlist, dict) else json.loads(Path(netlist).read_text())
    top = top_module(d)
    groups: dict = defaultdict(Counter)
    lsr_ffs: Counter = Counter()
    ce_nets = set()
    n = 0
    for cell in top.get("cells", {}).values():
        if cell.get("type") != "TRELLIS_FF":
            continue
        n += 1
        conn = cell.get("connections", {})
        clk = _net(conn, "CLK")
        lsr = _net(conn, "LSR")
        ce = _net(conn, "CE")
        groups[(clk, lsr)][ce] += 1
        if lsr is not None:
            lsr_ffs[lsr] += 1
        if ce is not None:
            ce_nets.add(ce)
    per_slice = FFS_PER_TILE // _FFS_PER_SLICE
    tiles = sum(-(-sum(-(-k // _FFS_PER_SLICE) for k in ces.values()) // per_slice)
                for ces in groups.values())
    return {"ffs": n, "lsr_nets": len(lsr_ffs), "ce_nets": len(ce_nets),
            "private_lsr_ffs": sum(k for k in lsr_ffs.values() if k <= 2), "min_tiles": tiles}


def describe_control_sets(cs: dict) -> str:
    """One line for :func:`ff_control_sets`' result with ``tiles`` (the device's) added; it
    warns above :data:`WARN_SHARE`."""
    share = cs["min_tiles"] / cs["tiles"]
    return (f"{cs['ffs']} flip-flops on {cs['lsr_nets']} LSR and {cs['ce_nets']} CE nets need at "
            f"least {cs['min_tiles']} of {cs['tiles']} logic tiles ({100 * share:.0f}%)"
            + (f": above {100 * WARN_SHARE:.0f}%, placement may not legalise (one LSR net per "
               f"tile; docs/synthesis.md)" if share > WARN_SHARE else ""))


def top_module(design: dict) -> dict:
    """The top module of a yosys or nextpnr JSON design (the one module if it has no ``top``
    attribute); ``ValueError`` unless there is exactly one."""
    mods = design.get("modules", {})
    tops = [m for m in mods.values() if _is_top(m)] or (list(mods.values()) if len(mods) == 1 else [])
    if len(tops) != 1:
        raise ValueError(f"netlist: {len(tops)} top modules among {len(mods)}; expected one "
                         f"(a flattened design)")
    return tops[0]


def _is_top(module: dict) -> bool:
    """yosys writes the ``top`` attribute as a binary string (or, from some front ends, an int)."""
    v = module.get("attributes", {}).get("top", 0)
    return bool(int(v, 2) if isinstance(v, str) else v)


def _net(conn: dict, port: str):
    """The net of a one-bit port, or ``None`` when unconnected or tied to a constant."""
    bits = conn.get(port)
    if not bits or not isinstance(bits[0], int):
        return None
    return bits[0]
