"""nextpnr and the bitstream packer: one place-and-route run, a seed sweep over several,
and the options they take (placer, router). :func:`~.flow.synthesize` calls them on the
netlist yosys wrote into its output folder."""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

from fluidnpu.outputs import atomic_write

from .choices import PLACERS, ROUTERS
from .congestion import HEATMAP_DIR, HEATMAP_PREFIX, clear_heatmaps
from .congestion import summarize as summarize_congestion
from .parse import overflowing, parse_nextpnr_log, parse_nextpnr_report
from .targets import ECP5_ROUTER_ARGS, Target
from .tools import ToolFailed, ToolTimeout, check_nextpnr_log, run_tool, stop_running_tools

__all__ = ["PnR", "resolve_placer", "resolve_router", "router_args", "place_and_route",
           "seed_sweep", "pack"]

#: a stage's progress callback: ``say(stage, message)``
Progress = Callable[[str, str], None]


def _resolve(option: str, value: str, choices: tuple[str, ...], auto: str) -> str:
    """``value`` of a tool ``option`` checked against ``choices``; ``auto`` resolved."""
    if value not in choices:
        raise ValueError(f"{option} = {value!r}: must be one of {', '.join(choices)}")
    return auto if value == "auto" else value


def resolve_placer(placer: str, family: str) -> str:
    """The nextpnr placer ``placer`` means on a device ``family`` (``auto`` resolved)."""
    return _resolve("placer", placer, PLACERS, "static" if family == "ecp5" else "heap")


def resolve_router(router: str, family: str) -> str:
    """The nextpnr router ``router`` means on a device ``family`` (``auto`` resolved)."""
    return _resolve("router", router, ROUTERS, "router2" if family == "ecp5" else "router1")


def router_args(router: str, family: str) -> tuple[str, ...]:
    """nextpnr's options for the resolved ``router`` (router2 with timing-driven rip-up on
    ECP5; nothing for router1 off ECP5, nextpnr's default there)."""
    if router == "router2":
        return ECP5_ROUTER_ARGS if family == "ecp5" else ("--router", "router2")
    return ("--router", "router1") if family == "ecp5" else ()


class PnR(NamedTuple):
    """What one nextpnr run gave (:func:`place_and_route`)."""

    fits: bool
    reason: str
    util: dict
    fmax: float | None              #: after routing; None when not routed
    crit: dict | None               #: the critical path
    placed: float | None            #: routing cut by the timeout: the estimate after placement
    congestion: dict | None = None  #: router2's overuse by net family (``congestion=True``)


def place_and_route(tgt: Target, out: Path, seed: int, target_mhz: float,
                     timeout: float | None, say: Progress, stage_s: dict, files: dict,
                     versions: dict, *, pack_only: bool = False, placer: str = "heap",
                     router: str = "router2", congestion: bool = False) -> PnR:
    """Run nextpnr; returns what it gave (:class:`PnR`).

    A run stopped by ``timeout`` after placement (its log has nextpnr's timing estimate
    after placement) is not an error: it fits, ``fmax`` is ``None``, ``placed`` is that
    estimate and ``reason`` says routing did not finish. Stopped earlier, it raises.
    """
    nlog = out / "nextpnr.log"
    report = out / "report.json"
    for stale in (nlog, report):
        stale.unlink(missing_ok=True)
    result_file = out / ("top.config" if tgt.family == "ecp5" else "top.asc")
    args = [*tgt.nextpnr_args, "--json", "top.json", "--log", "nextpnr.log",
            "--report", "report.json", "--seed", str(seed), "--timing-allow-fail", "--quiet"]
    if placer != "heap":
        args += ["--placer", placer]
    args += router_args(router, tgt.family)
    if congestion:
        (out / "congestion.json").unlink(missing_ok=True)
        clear_heatmaps(out)                                  # a stopped run's files
        (out / HEATMAP_DIR).mkdir()
        args += ["--router2-heatmap", HEATMAP_PREFIX]
        files["congestion"] = "congestion.json"
    if tgt.family == "ecp5":
        args += ["--lpf", "top.lpf"] + ([] if pack_only else ["--textcfg", "top.config"])
    else:
        args += ["--pcf", "top.pcf"] + ([] if pack_only else ["--asc", "top.asc"])
    if pack_only:
        args.append("--pack-only")
    files.update(nextpnr_log="nextpnr.log", report="report.json")
    say("nextpnr", f"{tgt.nextpnr} ({versions[tgt.nextpnr]}) at {target_mhz:g} MHz, seed {seed} "
        f"-> {nlog}")
    t = time.monotonic()
    cong = None
    try:
        run_tool(tgt.nextpnr, args, cwd=out, log=nlog,
                 outputs=[report] if pack_only else [report, result_file],
                 check_log=check_nextpnr_log, log_is_tool_log=True, timeout=timeout)
    except ToolFailed as e:
        if congestion:      # what routing did before it stopped is the point of asking
            cong = write_congestion(out)
        stage_s["nextpnr"] = round(time.monotonic() - t, 2)
        text = nlog.read_text(errors="replace") if nlog.exists() else ""
        parsed = parse_nextpnr_log(text)
        over, why = overflowing(parsed["utilization"], parsed["errors"])
        if over:
            say("nextpnr", f"does not fit: {why}")
            return PnR(False, why, parsed["utilization"], None, None, None)
        if isinstance(e, ToolTimeout) and parsed["fmax"] and not pack_only:
            placed = min(v["achieved"] for v in parsed["fmax"].values())
            why = (f"routing did not finish within {e.timeout:g} s; nextpnr's estimate after "
                   f"placement: {placed:.2f} MHz")
            say("nextpnr", why)
            return PnR(True, why, parsed["utilization"], None, None, placed, cong)
        raise
    except BaseException:
        if congestion:      # interrupted: no per-iteration heatmaps left behind
            clear_heatmaps(out)
        raise
    stage_s["nextpnr"] = round(time.monotonic() - t, 2)
    if congestion:
        cong = write_congestion(out)
    if pack_only:
        try:
            util = parse_nextpnr_report(json.loads(report.read_text()))["utilization"]
        except (ValueError, KeyError, TypeError):
            util = {}
        util = util or parse_nextpnr_log(nlog.read_text(errors="replace"))["utilization"]
        over, why = overflowing(util, [])
        return PnR(not over, why, util, None, None, None)
    try:
        rep = parse_nextpnr_report(json.loads(report.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ToolFailed(f"{tgt.nextpnr}: unreadable report {report}: {e}", nlog) from None
    if not rep["fmax"]:
        # fall back on the log's "Max frequency" lines
        rep["fmax"] = parse_nextpnr_log(nlog.read_text(errors="replace"))["fmax"]
    if not rep["fmax"]:
        raise ToolFailed(f"{tgt.nextpnr}: no Fmax in {report} or the log", nlog)
    fmax = min(v["achieved"] for v in rep["fmax"].values())
    return PnR(True, "", rep["utilization"], fmax, rep["critical_path"], None, cong)


def write_congestion(out: Path) -> dict | None:
    """Summarise router2's heatmaps of the run in ``out`` into ``out/congestion.json``."""
    c = summarize_congestion(out)
    if c is not None:
        atomic_write(out / "congestion.json", json.dumps(c, indent=1) + "\n")
    return c


def seed_sweep(tgt: Target, out: Path, seeds: tuple[int, ...], jobs: int | None,
                target_mhz: float, timeout, say: Progress, stage_s: dict, files: dict,
                versions: dict, placer: str = "heap", router: str = "router2",
                congestion: bool = False) -> tuple[int, PnR, dict]:
    """Place and route ``out/top.json`` once per seed, ``jobs`` at once; keep the best.

    Returns ``(seed, run, seed_fmax)`` of the best run (highest Fmax; the first seed on a
    tie; if no seed routed within the timeout, the highest estimate after placement),
    whose nextpnr log, report and routed design are copied into ``out``. A seed whose run
    fails is reported and skipped; if every run fails, the first failure is raised.
    """
    jobs = jobs or min(len(seeds), os.cpu_count() or 1)
    say("nextpnr", f"seed sweep: seeds {', '.join(map(str, seeds))}, {jobs} at a time")

    def one(s):
        d = out / f"seed-{s}"
        d.mkdir(exist_ok=True)
        for name in ("top.json", "top.lpf" if tgt.family == "ecp5" else "top.pcf"):
            dst = d / name
            dst.unlink(missing_ok=True)
            try:
                os.link(out / name, dst)
            except OSError:
                shutil.copy(out / name, dst)
        st, fl = {}, {}
        r = place_and_route(tgt, d, s, target_mhz, timeout, say, st, fl, versions, placer=placer,
                             router=router, congestion=congestion)
        say("nextpnr", f"seed {s}: " + (f"{r.fmax:.2f} MHz" if r.fmax is not None else
                                        r.reason if r.placed is not None else
                                        f"does not fit: {r.reason}"))
        return r

    t = time.monotonic()
    runs, errors = {}, {}
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {s: pool.submit(one, s) for s in seeds}
        for s, f in futures.items():
            try:
                runs[s] = f.result()
            except ToolFailed as e:
                errors[s] = e
                say("nextpnr", f"seed {s} failed: {e}")
    except BaseException:
        # Ctrl-C or SIGTERM (the main thread's): no further seed starts, and the running
        # ones' nextpnr processes are killed, not left behind the interpreter's exit
        pool.shutdown(wait=False, cancel_futures=True)
        stop_running_tools()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    stage_s["nextpnr"] = round(time.monotonic() - t, 2)
    if not runs:
        raise errors[seeds[0]]
    seed_fmax = {str(s): (round(runs[s].fmax, 2) if s in runs and runs[s].fmax is not None
                          else None) for s in seeds}
    routed = [s for s in seeds if s in runs and runs[s].fits and runs[s].fmax is not None]
    placed_only = [s for s in seeds if s in runs and runs[s].placed is not None]
    if routed:
        best = max(routed, key=lambda s: runs[s].fmax)
    elif placed_only:
        best = max(placed_only, key=lambda s: runs[s].placed)
    else:
        best = next(iter(runs))
    d = out / f"seed-{best}"
    result_file = "top.config" if tgt.family == "ecp5" else "top.asc"
    for name in ("nextpnr.log", "report.json", result_file, "congestion.json"):
        if (d / name).exists():
            shutil.copy(d / name, out / name)
    files.update(nextpnr_log="nextpnr.log", report="report.json",
                 **({"congestion": "congestion.json"} if congestion else {}))
    if routed:
        say("nextpnr", f"best: seed {best}, {runs[best].fmax:.2f} MHz")
    return best, runs[best], seed_fmax


def pack(tgt: Target, out: Path, timeout, say: Progress, stage_s: dict, files: dict) -> None:
    plog = out / "pack.log"
    if tgt.family == "ecp5":
        args, bit = ["--input", "top.config", "--bit", "top.bit"], out / "top.bit"
    else:
        args, bit = ["top.asc", "top.bin"], out / "top.bin"
    bit.unlink(missing_ok=True)
    say("pack", f"{tgt.pack} -> {bit.name}")
    stage_s["pack"] = round(run_tool(tgt.pack, args, cwd=out, log=plog, outputs=[bit],
                                     timeout=timeout), 2)
    files.update(pack_log="pack.log", bitstream=bit.name)
