"""Block-RAM floorplan for ECP5: each operand memory's blocks side by side in one row.

A 4 x 4's X memory is 16 ``DP16KD`` blocks read and written at one address (bit slices of
the word, hw/bram.py). Left to itself, nextpnr spread one memory's blocks over up to 58
rows of the device, so the register driving their address or write port had 9-12 ns of
wire: the default's worst path in every run of 3 Dec 2026 (docs/synthesis.md). The flow
therefore pins the blocks (nextpnr's generic ``BEL`` cell attribute) before placement:

* a memory's blocks sit next to each other in one block-RAM row, so the wire from their
  driver spans at most the memory's own width;
* PE ``g``'s W memory sits beside X memory ``g``, and the memories fill the device's most
  central rows first (the logic between them stays short);
* every other cell (logic, DSPs, the drain's and harness's RAMs) is placed by nextpnr.

Cell names come from the generator: ``...xmem<g>.bram<i>`` and ``...wmem<g>.bram<i>``
(hw/buffers.py, hw/bram.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EBR_ROWS", "Floorplan", "FLOORPLANS", "plan_ebr", "apply_floorplan"]

#: the flow's floorplan choices (``--floorplan``)
FLOORPLANS = ("auto", "none")


def _row(y: int) -> tuple[str, ...]:
    """One row of the LFE5U-85F's 52 EBR sites, west to east: groups of four blocks every
    9 columns from column 4, with the device's centre spine (columns 65-68) between."""
    cols = [c + 2 * z for c in (*range(4, 64, 9), *range(69, 121, 9)) for z in range(4)]
    return tuple(f"X{x}/Y{y}/EBR{i % 4}" for i, x in enumerate(cols))


#: nextpnr's EBR sites per device (``--85k``), rows ordered from the device's centre out.
#: Read from a placed design that fills every block (tests/test_floorplan.py checks it
#: against nextpnr when the tools are installed).
EBR_ROWS: dict[str, tuple[tuple[str, ...], ...]] = {
    "85k": tuple(_row(y) for y in (46, 70, 22, 82)),
}

_MEM = re.compile(r"(?:^|\.)(x|w)mem(\d+)\.bram(\d+)$")


@dataclass(frozen=True)
class Floorplan:
    """Where the flow put each memory's blocks (``result.json``'s ``floorplan``)."""

    bels: dict              #: cell name -> BEL
    rows: dict              #: "Y<row>" -> memories in it, west to east ("w0", "x0", ...)

    def summary(self) -> str:
        return "; ".join(f"{y}: {' '.join(ms)}" for y, ms in self.rows.items())


def plan_ebr(cell_names, device: str) -> Floorplan | None:
    """The floorplan of the operand memories among ``cell_names`` (``DP16KD`` cells), or
    ``None`` when there are none or they do not fit the rows (nextpnr then places them)."""
    rows = EBR_ROWS.get(device)
    mems: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name in cell_names:
        m = _MEM.search(name)
        if m:
            mems.setdefault((m[1], int(m[2])), []).append((int(m[3]), name))
    if rows is None or not mems:
        return None
    groups = sorted({g for _, g in mems})
    # W g beside X g, pairs mirrored so that neighbouring PEs' W memories meet: w0 x0 x1 w1 ...
    order = [k for g in groups for k in ((("w", g), ("x", g)) if g % 2 == 0 else
                                         (("x", g), ("w", g))) if k in mems]
    sizes = [len(mems[k]) for k in order]
    if max(sizes) > len(rows[0]):
        return None
    # the fewest central rows that hold the memories, each memory whole in one row,
    # filled in order and balanced (a greedy cut at an equal share per row)
    for nrows in range(1, len(rows) + 1):
        share = -(-sum(sizes) // nrows)
        cut, cur, row = [[]], 0, 0
        for k, s in zip(order, sizes):
            if cur + s > len(rows[row]) or (cur >= share and row + 1 < nrows):
                row, cur = row + 1, 0
                if row == nrows:
                    break
                cut.append([])
            cut[-1].append(k)
            cur += s
        else:
            break
    else:
        return None
    bels, used = {}, {}
    for r, ks in zip(rows, cut):
        n = sum(len(mems[k]) for k in ks)
        slot = (len(r) - n) // 2           # centred in the row
        for k in ks:
            for _, name in sorted(mems[k]):
                bels[name] = r[slot]
                slot += 1
        used[r[0].split("/")[1]] = [f"{w}{g}" for w, g in ks]
    return Floorplan(bels=bels, rows=used)


def apply_floorplan(netlist: Path, device: str) -> Floorplan | None:
    """Pin the operand memories' blocks of the yosys netlist ``netlist`` (JSON, rewritten in
    place through a temporary file) with ``BEL`` attributes; returns the plan or ``None``."""
    netlist = Path(netlist)
    design = json.loads(netlist.read_text())
    cells = {}
    for mod in design.get("modules", {}).values():
        for name, c in mod.get("cells", {}).items():
            if c.get("type") == "DP16KD":
                cells[name] = c
    plan = plan_ebr(cells, device)
    if plan is None:
        return None
    for name, bel in plan.bels.items():
        cells[name].setdefault("attributes", {})["BEL"] = bel
    tmp = netlist.with_suffix(".fp.tmp")
    tmp.write_text(json.dumps(design))
    tmp.replace(netlist)
    return plan
