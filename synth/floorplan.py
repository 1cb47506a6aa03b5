"""Block-RAM floorplan for ECP5: each operand memory's blocks side by side in one row.

A 4 x 4's X memory is 16 ``DP16KD`` blocks read and written at one address (bit slices of
the word, hw/bram.py). Left to itself, nextpnr spread one memory's blocks over up to 58
rows of the device, so the register driving their address or write port had 9-12 ns of
wire: the default's worst path in every run of 3 Dec 2026 (docs/synthesis.md). The flow
therefore pins the blocks (nextpnr's generic ``BEL`` cell attribute) before placement:

* a memory's blocks sit next to each other in one block-RAM row, so the wire from their
  driver spans at most the memory's own width;
* PE ``g``'s W memory sits beside X memory ``g``, the W memories of PEs ``2u`` and
  ``2u + 1`` side by side between their X memories, and the memories fill the device's
  most central rows first (the logic between them stays short);
* each PE's multipliers sit side by side in the DSP row nearest its memories
  (:func:`plan_dsp`);
* every other cell (logic, the drain's DSPs and RAMs, the harness's RAM) is placed by
  nextpnr.

Cell names come from the generator: ``...xmem<g>.bram<i>``, ``...wmem<g>.bram<i>`` and
``...pe.mul_<pe>_<lane>.mult``
(hw/buffers.py, hw/bram.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from fluidnpu.outputs import atomic_write

from .choices import FLOORPLANS

__all__ = ["EBR_ROWS", "DSP_ROWS", "Floorplan", "FLOORPLANS", "plan_ebr", "plan_dsp",
           "apply_floorplan"]


#: the LFE5U-85F's blocks of 9 columns holding 4 EBR or 4 DSP sites each, west to east (from
#: column 4, the device's centre spine, columns 65-68, between)
_BLOCKS = (*range(4, 64, 9), *range(69, 121, 9))


def _row(y: int) -> tuple[str, ...]:
    """One row of the LFE5U-85F's 52 EBR sites, west to east: four per block (columns c,
    c+2, c+4, c+6)."""
    cols = [c + 2 * z for c in _BLOCKS for z in range(4)]
    return tuple(f"X{x}/Y{y}/EBR{i % 4}" for i, x in enumerate(cols))


#: nextpnr's EBR sites per device (``--85k``), rows in the order memories fill them: the
#: central row, then the other one beside the same DSP row (Y22: Y46 and Y22 around DSP
#: row Y34), then Y70 and Y82 (beside DSP row Y58), so the PEs of neighbouring rows, which
#: the stacking tree adds and the copy network joins, share a DSP row. (Y46, Y70, Y22, Y82,
#: centre out, until 5 Dec 2026: the 8 x 8's PE pairs 2-3 and 6-7 then sat 60 rows apart.)
#: Read from a placed design that fills every block (tests/test_floorplan.py checks it
#: against nextpnr when the tools are installed).
EBR_ROWS: dict[str, tuple[tuple[str, ...], ...]] = {
    "85k": tuple(_row(y) for y in (46, 22, 70, 82)),
}

_MEM = re.compile(r"(?:^|\.)(x|w)mem(\d+)\.bram(\d+)$")
_MUL = re.compile(r"(?:^|\.)pe\.mul_(\d+)_(\d+)\.mult$")
#: the drain's multipliers: each beat lane's low and high product, the row offset's
_DRAIN = re.compile(r"(?:^|\.)drain\.(?:mul_(lo|hi)(\d+)|rowmul)\.mult$")


def _dsp_row(y: int) -> tuple[str, ...]:
    """One row of the LFE5U-85F's 52 MULT18X18D sites, west to east: four per block
    (``MULT18_0``, ``_1``, ``_4``, ``_5`` at columns c, c+1, c+4, c+5)."""
    return tuple(f"X{c + d}/Y{y}/MULT18_{d}" for c in _BLOCKS for d in (0, 1, 4, 5))


#: nextpnr's DSP (MULT18X18D) sites per device by row (tests/test_floorplan.py checks them
#: against nextpnr when the tools are installed)
DSP_ROWS: dict[str, dict[str, tuple[str, ...]]] = {
    "85k": {f"Y{y}": _dsp_row(y) for y in (10, 34, 58)},
}


@dataclass(frozen=True)
class Floorplan:
    """Where the flow put each memory's blocks (``result.json``'s ``floorplan``)."""

    bels: dict              #: cell name -> BEL
    rows: dict              #: "Y<row>" -> memories in it, west to east ("w0", "x0", ...)
    #: the PE array's multipliers no DSP row plan took (left to nextpnr's placer)
    mults_left: int = 0

    def summary(self) -> str:
        s = "; ".join(f"{y}: {' '.join(ms)}" for y, ms in self.rows.items())
        if self.mults_left:
            s += (f"; {self.mults_left} PE multipliers left to nextpnr (the DSP rows nearest "
                  f"their memories have too few sites)")
        return s


def plan_ebr(cell_names, device: str, *, fill: bool = False) -> Floorplan | None:
    """The floorplan of the operand memories among ``cell_names`` (``DP16KD`` cells), or
    ``None`` when there are none or they do not fit the rows (nextpnr then places them).

    The memories take the fewest central rows that hold them, balanced between those
    rows; with ``fill`` each row is filled with as many whole PEs (X and W memory) as it
    holds before the next: fewer PEs in the last row, so the PEs' multipliers fit the DSP
    rows nearest their memories (:func:`apply_floorplan`)."""
    rows = EBR_ROWS.get(device)
    mems: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name in cell_names:
        m = _MEM.search(name)
        if m:
            mems.setdefault((m[1], int(m[2])), []).append((int(m[3]), name))
    if rows is None or not mems:
        return None
    groups = sorted({g for _, g in mems})
    # W g beside X g, pairs mirrored so that neighbouring PEs' W memories meet in the
    # middle: x0 w0 w1 x1 x2 w2 w3 x3 ... (PEs 2u and 2u + 1, which the stacking tree adds
    # first, sit between their W memories. Until 5 Dec 2026 the order was w0 x0 x1 w1: with
    # one pair of PEs per row, as on the 8 x 4 and the 8 x 8, their W memories were at the
    # row's two ends, 83 columns apart.)
    order = [k for g in groups for k in ((("x", g), ("w", g)) if g % 2 == 0 else
                                         (("w", g), ("x", g))) if k in mems]
    sizes = [len(mems[k]) for k in order]
    if max(sizes) > len(rows[0]):
        return None
    cut = _fill_cut(order, sizes, rows) if fill else _balanced_cut(order, sizes, rows)
    if cut is None:
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


def _balanced_cut(order, sizes, rows):
    """The fewest central rows that hold the memories, each memory whole in one row,
    filled in order and balanced (a greedy cut at an equal share per row)."""
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
            return cut
    return None


def _fill_cut(order, sizes, rows):
    """Rows filled in ``order`` with whole PEs (the memories of one group ``g``, adjacent
    in ``order``), each row as full as it can be before the next."""
    pes: dict[int, list] = {}
    for k, n in zip(order, sizes):
        pes.setdefault(k[1], []).append((k, n))
    cut, cur, row = [[]], 0, 0
    for pe in pes.values():
        n = sum(s for _, s in pe)
        if cur + n > len(rows[row]):
            row, cur = row + 1, 0
            if row == len(rows) or n > len(rows[row]):
                return None
            cut.append([])
        cut[-1].extend(k for k, _ in pe)
        cur += n
    return cut


def _nearest_dsp_row(ebr_row: str, dsp_rows) -> str:
    """The DSP row nearest an EBR row (ties to the south, the lower row number)."""
    y = int(ebr_row[1:])
    return min(dsp_rows, key=lambda r: (abs(int(r[1:]) - y), int(r[1:])))


def plan_dsp(cell_names, ebr_rows: dict, device: str) -> Floorplan | None:
    """Pin the PE array's multipliers (``...pe.mul_<pe>_<lane>.mult``): each PE's lanes on
    neighbouring sites of the DSP row nearest the block-RAM row of its memories
    (``ebr_rows``: :attr:`Floorplan.rows` of :func:`plan_ebr`), the PEs of one block-RAM
    row side by side in PE order, centred on the first row's block. ``None`` when there
    are no multipliers, no site table or they do not fit. When that leaves no run of free
    sites long enough for the drain's multipliers (``...drain.mul_lo<l>``, ``mul_hi<l>``,
    ``rowmul``), the PEs of each row are packed from its west end and the drain's pinned
    east of them (:func:`_pin_drain`); otherwise nextpnr places the drain's.

    The static placer spread each PE's 8 multipliers over 50-70 columns of two DSP rows on
    the 8 x 8 (5 Dec 2026), so the PE's adder tree and its stacking partner were as far
    apart; pinned, a PE spans two 9-column blocks."""
    rows = DSP_ROWS.get(device)
    lanes: dict[int, list[tuple[int, str]]] = {}
    for name in cell_names:
        m = _MUL.search(name)
        if m:
            lanes.setdefault(int(m[1]), []).append((int(m[2]), name))
    if rows is None or not lanes:
        return None
    pe_row = {int(mem[1:]): r for r, mems in ebr_rows.items() for mem in mems if mem[0] == "w"}
    if set(lanes) - set(pe_row):
        return None
    blocks: dict[str, list[int]] = {}          # DSP row -> its PEs, in PE order
    for pe in sorted(lanes):
        blocks.setdefault(_nearest_dsp_row(pe_row[pe], rows), []).append(pe)
    start, total = {}, {}
    for r, pes in blocks.items():
        total[r] = sum(len(lanes[pe]) for pe in pes)
        first = sum(len(lanes[pe]) for pe in pes if pe_row[pe] == pe_row[pes[0]])
        if total[r] > len(rows[r]):
            return None
        start[r] = max(0, min((len(rows[r]) - first) // 2, len(rows[r]) - total[r]))
    # Centred, a row's PEs leave its free sites at its two ends. When neither end of any
    # row holds all the drain's multipliers (the 16 x 8: 6 sites at each end of two rows
    # for 17), the PEs are packed west and the drain's pinned in the east ends instead.
    drain = _drain_cells(cell_names)
    pack = bool(drain) and max(max(start[r], len(rows[r]) - start[r] - total[r])
                               for r in blocks) < sum(map(len, drain))
    bels, used, ends = {}, {}, {}
    for r, pes in blocks.items():
        sites = rows[r]
        slot = 0 if pack else start[r]
        for pe in pes:
            for _, name in sorted(lanes[pe]):
                bels[name] = sites[slot]
                slot += 1
        used[f"{r} DSP"] = [f"pe{pe}" for pe in pes]
        ends[r] = slot
    if pack:
        _pin_drain(drain, rows, ends, bels, used)
    return Floorplan(bels=bels, rows=used)


def _drain_cells(cell_names) -> list[list[str]]:
    """The drain's multipliers in groups to keep side by side: each beat lane's low and
    high product, then the row offset's."""
    lanes: dict[int, list[tuple[str, str]]] = {}
    rest = []
    for name in cell_names:
        m = _DRAIN.search(name)
        if m and m[1]:
            lanes.setdefault(int(m[2]), []).append((m[1], name))
        elif m:
            rest.append(name)
    return [[n for _, n in sorted(v, key=lambda t: t[0] != "lo")] for _, v in sorted(lanes.items())] \
        + [[n] for n in sorted(rest)]


def _pin_drain(groups, rows, ends, bels, used) -> None:
    """Pin the drain's multiplier groups in the free sites east of the PEs (``ends``: the
    first free site per DSP row), the roomiest row first, a group never split across rows.
    Left to nextpnr, they filled the sites the PEs left at both ends of the rows: on the
    16 x 8 (990282f) lane 2's at X9 and the rest at X109-119, and the routed design's worst
    path ran from one across the device (docs/synthesis.md, 6 Dec 2026, evening).
    Groups that fit nowhere are left to nextpnr."""
    order = sorted(ends, key=lambda r: ends[r] - len(rows[r]))
    free = dict(ends)
    for g in groups:
        r = next((r for r in order if len(rows[r]) - free[r] >= len(g)), None)
        if r is None:
            continue
        for name in g:
            bels[name] = rows[r][free[r]]
            free[r] += 1
    for r in order:
        if free[r] > ends[r]:
            used[f"{r} DSP"].append(f"drain({free[r] - ends[r]})")


def apply_floorplan(netlist: Path, device: str, *, design: dict | None = None) -> Floorplan | None:
    """Pin the operand memories' blocks (:func:`plan_ebr`) and the PE array's multipliers
    (:func:`plan_dsp`) of the yosys netlist ``netlist`` (JSON, rewritten whole in place by
    :func:`~fluidnpu.outputs.atomic_write`) with ``BEL`` attributes; returns the plan or
    ``None``. ``design``: ``netlist`` already parsed (the flow reads it once for this and
    the control sets; it gets the attributes too)."""
    netlist = Path(netlist)
    if design is None:
        design = json.loads(netlist.read_text())
    cells, mults = {}, {}
    for mod in design.get("modules", {}).values():
        for name, c in mod.get("cells", {}).items():
            if c.get("type") == "DP16KD":
                cells[name] = c
            elif c.get("type") == "MULT18X18D":
                mults[name] = c
    plan = plan_ebr(cells, device)
    if plan is None:
        return None
    dsp = plan_dsp(mults, plan.rows, device)
    if dsp is None and mults:
        # the balanced rows put more PEs near one DSP row than it has sites (the 16 x 8:
        # four PEs in each of the four block-RAM rows, eight of them nearest Y58): rows
        # filled whole instead (five, five, five and one), so every PE's multipliers sit
        # in the DSP row nearest its memories. (Until 6 Dec 2026 the 16 x 8's multipliers
        # were left to nextpnr.)
        filled = plan_ebr(cells, device, fill=True)
        dsp = plan_dsp(mults, filled.rows, device) if filled is not None else None
        if dsp is not None:
            plan = filled
    if dsp is not None:
        plan = Floorplan(bels={**plan.bels, **dsp.bels}, rows={**plan.rows, **dsp.rows})
        cells.update(mults)
    else:
        # said in the flow's floorplan line: the 16 x 8's went unnoticed until 6 Dec 2026
        plan = replace(plan, mults_left=sum(1 for n in mults if _MUL.search(n)))
    for name, bel in plan.bels.items():
        cells[name].setdefault("attributes", {})["BEL"] = bel
    atomic_write(netlist, json.dumps(design))
    return plan
