"""Parsers for the synthesis tools' outputs: yosys ``stat``, nextpnr's JSON report and log.

All functions take text (or a parsed JSON object) and return plain dicts, so they are
tested on canned outputs (tests/data/synth/).
"""
from __future__ import annotations

import re

__all__ = ["parse_yosys_stat", "parse_nextpnr_report", "parse_nextpnr_log",
           "overflowing", "summarize_path", "short_source"]


_STAT_HEADER = re.compile(r"^=== (\S+) ===\s*$")
_STAT_CELLS = re.compile(r"^\s+Number of cells:\s+(\d+)\s*$")
_STAT_MEMS = re.compile(r"^\s+Number of memories:\s+(\d+)\s*$")
_STAT_MEMBITS = re.compile(r"^\s+Number of memory bits:\s+(\d+)\s*$")
_STAT_TYPE = re.compile(r"^\s+(\S+)\s+(\d+)\s*$")


def parse_yosys_stat(text: str, top: str | None = None) -> dict:
    """The last ``stat`` block of a yosys log (of module ``top`` if given).

    Returns ``{"module", "cells", "by_type": {type: count}, "memories", "memory_bits"}``;
    raises ``ValueError`` when the log has no statistics.
    """
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines)
              if (m := _STAT_HEADER.match(ln)) and (top is None or m.group(1) in (top, "\\" + top))]
    if not starts:
        raise ValueError("no '=== module ===' statistics block in the yosys log")
    i = starts[-1]
    out = {"module": _STAT_HEADER.match(lines[i]).group(1), "cells": None, "by_type": {},
           "memories": 0, "memory_bits": 0}
    in_cells = False
    for ln in lines[i + 1:]:
        if _STAT_HEADER.match(ln) or ln.startswith(("=== design hierarchy", "End of script")):
            break
        if m := _STAT_CELLS.match(ln):
            out["cells"] = int(m.group(1))
            in_cells = True
            continue
        if m := _STAT_MEMS.match(ln):
            out["memories"] = int(m.group(1))
            continue
        if m := _STAT_MEMBITS.match(ln):
            out["memory_bits"] = int(m.group(1))
            continue
        if in_cells:
            if m := _STAT_TYPE.match(ln):
                out["by_type"][m.group(1)] = int(m.group(2))
            elif ln.strip():
                in_cells = False
            elif out["by_type"]:
                in_cells = False
    if out["cells"] is None:
        raise ValueError("the yosys statistics block has no 'Number of cells' line")
    return out


def short_source(src: str) -> str:
    """``/abs/path/hw/loader.py:78`` -> ``hw/loader.py:78`` (project folders kept)."""
    for folder in ("hw", "synth", "sim", "sched", "fluidnpu"):
        k = src.rfind(f"/{folder}/")
        if k >= 0:
            return src[k + 1:]
    return src


def summarize_path(path: list[dict], *, own_sources: bool = True) -> dict:
    """Condense one nextpnr critical path (the ``path`` list of the JSON report)."""
    total = sum(float(s.get("delay", 0.0)) for s in path)
    logic = sum(float(s.get("delay", 0.0)) for s in path if s.get("type") == "logic")
    routing = sum(float(s.get("delay", 0.0)) for s in path if s.get("type") == "routing")
    levels = sum(1 for s in path if s.get("type") == "logic")
    start = path[0]["from"]["cell"] if path else None
    end = path[-1]["to"]["cell"] if path else None
    nets, sources = [], []
    for s in path:
        if s.get("type") == "routing" and s.get("net"):
            nets.append(s["net"])
        for src in s.get("sources", []) or []:
            src = short_source(src)
            if own_sources and not src.startswith(("hw/", "synth/")):
                continue
            if src not in sources:
                sources.append(src)
    return {"delay_ns": round(total, 3), "logic_ns": round(logic, 3),
            "routing_ns": round(routing, 3), "logic_levels": levels,
            "from": start, "to": end, "nets": nets, "sources": sources}


def parse_nextpnr_report(report: dict) -> dict:
    """nextpnr's ``--report`` JSON: utilisation, Fmax per clock, the critical path.

    Returns ``{"utilization": {bel: {"used", "available"}}, "fmax": {clock: {"achieved",
    "constraint"}}, "critical_path": summary or None}``.
    """
    util = {k: {"used": int(v["used"]), "available": int(v["available"])}
            for k, v in (report.get("utilization") or {}).items()}
    fmax = {k: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
            for k, v in (report.get("fmax") or {}).items()}
    crit = None
    worst = None
    for cp in report.get("critical_paths") or []:
        frm, to = cp.get("from", ""), cp.get("to", "")
        if "<async>" in (frm, to) or frm != to:
            continue
        summ = summarize_path(cp.get("path") or [])
        summ["clock"] = frm
        if worst is None or summ["delay_ns"] > worst:
            worst, crit = summ["delay_ns"], summ
    return {"utilization": util, "fmax": fmax, "critical_path": crit}


_UTIL_LINE = re.compile(r"^Info:\s+(\S+):\s+(\d+)/\s*(\d+)\s+(\d+)%\s*$")
_FMAX_LINE = re.compile(r"^(?:Info|Warning): Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz"
                        r"\s+\((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """The nextpnr log: the (last) device utilisation table and the last Fmax per clock.

    Works on logs of failed runs too (the utilisation table is printed after packing,
    before placement), so an overflowing resource can be named.
    """
    util: dict[str, dict] = {}
    fmax: dict[str, dict] = {}
    errors = []
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("Info: Device utilisation:"):
            util = {}
            for nxt in lines[i + 1:]:
                m = _UTIL_LINE.match(nxt.replace("\t", " "))
                if not m:
                    break
                util[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
        elif m := _FMAX_LINE.match(ln):
            fmax[m.group(1)] = {"achieved": float(m.group(2)), "constraint": float(m.group(4))}
        elif ln.startswith("ERROR:"):
            errors.append(ln[len("ERROR:"):].strip())
    return {"utilization": util, "fmax": fmax, "errors": errors}


_RESOURCE_ERRORS = ("no bels remaining", "unable to place", "too many", "not enough",
                    "failed to place", "exceeds", "more than", "but device only has",
                    "out of", "could not find a location", "no free bel")


def overflowing(util: dict, errors: list[str]) -> tuple[bool, str]:
    """Did a run fail because the design needs more of a resource than the device has?

    Returns ``(True, reason)`` naming each overflowing resource and the error, or
    ``(False, "")`` when the failure is something else.
    """
    over = [f"{k} {v['used']}/{v['available']}" for k, v in util.items()
            if v["available"] > 0 and v["used"] > v["available"]]
    err = next((e for e in errors if any(p in e.lower() for p in _RESOURCE_ERRORS)), None)
    if not over and err is None:
        return False, ""
    parts = []
    if over:
        parts.append("needs more than the device has: " + ", ".join(over))
    if err:
        parts.append(err)
    return True, "; ".join(parts)
