"""The synthesis flow: configuration -> yosys -> nextpnr -> bitstream -> :class:`SynthResult`.

``synthesize(cfg, target, out_dir)`` is the one entry point (the CLI's ``fluidnpu synth``
calls it). Board targets (``ulx3s-85f``, ``icebreaker``) synthesise
:class:`~fluidnpu.synth.top.BoardTop` (the core, an on-chip RAM, a start button, LEDs)
with Debian's yosys, place and route it with nextpnr (YoWASP) and pack a bitstream;
``generic`` synthesises the bare core with yosys' technology-independent ``synth``
mapped to LUT4s, keeping memories whole, with no device flow.

Every tool's log stays in the output folder. Results are cached by (configuration,
target, seed, timing target, the sources of hw/ and synth/, the tool versions): a
repeated call returns at once with ``cached=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from fluidnpu.hw.config import HwConfig

from .parse import overflowing, parse_nextpnr_log, parse_nextpnr_report, parse_yosys_stat
from .result import SynthResult, resources_from
from .targets import TARGETS, Target, get_target
from .tools import (SynthError, ToolFailed, check_nextpnr_log, check_yosys_log, find_tool,
                    run_tool, tool_version)
from .top import DEFAULT_RAM_BYTES, BoardTop

__all__ = ["synthesize", "SynthResult", "SynthError", "TARGETS", "cache_dir", "cache_key",
           "sources_hash"]

Progress = Callable[[str, str], None]

_SYNTH_DIR = Path(__file__).resolve().parent
_HW_DIR = Path(__import__("fluidnpu.hw", fromlist=["config"]).__file__).resolve().parent

#: run right after reading the design: the flip-flops of signals named ``*_rep*`` are
#: register replicas (hw/pe_array.py: one copy of a high-fanout control register per PE, so
#: that each copy drives a small, local net); ``keep`` stops yosys from merging the
#: identical copies back into one.
KEEP_REPLICAS = "setattr -set keep 1 w:*_rep* %ci1 t:$dff %i"

#: the generic target's yosys script: ``synth -flatten -lut 4`` without ``memory_map``
#: (the buffers would become hundreds of thousands of flip-flops); memories stay cells.
GENERIC_SCRIPT = f"""\
read_rtlil top.il
{KEEP_REPLICAS}
synth -flatten -lut 4 -top top -run begin:fine
opt -fast -full
opt -full
techmap
opt -fast
abc -fast -lut 4
opt -fast
hierarchy -check
stat
check
"""


#: the synth/ modules that shape a result (the design's top, the flow, the targets, the
#: parsing); the sweep runner, the tool lookup and the CLI do not, so editing them keeps
#: the cache (tool versions are part of the key anyway)
FLOW_MODULES = ("__init__.py", "flow.py", "parse.py", "result.py", "targets.py", "top.py")


def sources_hash() -> str:
    """Hash of the generator and flow sources (hw/*.py and the flow modules of synth/)."""
    h = hashlib.sha256()
    for folder, names in ((_HW_DIR, None), (_SYNTH_DIR, FLOW_MODULES)):
        for p in sorted(folder.glob("*.py")):
            if names is not None and p.name not in names:
                continue
            h.update(f"{folder.name}/{p.name}".encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    """Where results are cached: ``$FLUIDNPU_SYNTH_CACHE``, else the build folder's synth-cache."""
    env = os.environ.get("FLUIDNPU_SYNTH_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    from fluidnpu.hw.runner import build_root
    return build_root() / "synth-cache"


def cache_key(cfg: HwConfig, target: str, versions: dict, **options) -> str:
    blob = json.dumps({"cfg": cfg.key(), "target": target, "src": sources_hash(),
                       "tools": versions, "options": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _default_out_dir(target: str, key: str) -> Path:
    from fluidnpu.hw.runner import build_root
    return build_root() / "synth" / f"{target}-{key[:12]}"


def synthesize(cfg: HwConfig, target: str = "ulx3s-85f", out_dir: str | Path | None = None, *,
               seed: int = 1, target_mhz: float | None = None,
               progress: Progress | None = None, use_cache: bool = True,
               bitstream: bool = True, pack_only: bool = False,
               ram_bytes: int = DEFAULT_RAM_BYTES,
               timeout: float | None = None) -> SynthResult:
    """Synthesise ``cfg`` for ``target`` and return its resources, Fmax and fit.

    * ``out_dir``: folder for the design, logs (``yosys.log``, ``nextpnr.log``),
      nextpnr's ``report.json``, the bitstream and ``result.json``; default
      ``.fluidnpu-build/synth/<target>-<key>``.
    * ``seed``: nextpnr's placement seed. ``target_mhz``: the clock constraint nextpnr
      works for (default ``cfg.clock_mhz``); ``fmax_mhz`` is what it reached.
    * ``progress(stage, message)``: called at each stage (``cache``, ``elaborate``,
      ``yosys``, ``nextpnr``, ``pack``, ``done``).
    * ``bitstream``: also run ecppack / icepack (board targets).
    * ``pack_only``: stop nextpnr after packing (a minute instead of an hour for a big
      core): resources and ``fits`` from the packed design (every resource within the
      device), no Fmax and no bitstream. For quick design-space sweeps.
    * ``timeout``: seconds allowed per tool run.

    A design that nextpnr cannot place for lack of resources gives ``fits=False`` and
    a ``reason``; a missing tool raises :class:`~fluidnpu.synth.tools.ToolMissing`
    naming its package; a tool that fails or stops early raises
    :class:`~fluidnpu.synth.tools.ToolFailed`.
    """
    if not isinstance(cfg, HwConfig):
        raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
    tgt = get_target(target)
    say = progress or (lambda stage, msg: None)
    if tgt.is_board:
        target_mhz = float(target_mhz if target_mhz is not None else cfg.clock_mhz)
        if not target_mhz > 0:
            raise ValueError(f"target_mhz = {target_mhz}: must be positive")
    else:
        target_mhz = None

    for key in tgt.tools():
        find_tool(key)          # ToolMissing before any work
    versions = {key: tool_version(key) for key in tgt.tools()}
    options = {"seed": seed if tgt.is_board else None, "target_mhz": target_mhz,
               "ram_bytes": ram_bytes if tgt.is_board else None,
               "bitstream": bool(bitstream) if tgt.is_board else None,
               "pack_only": bool(pack_only) if tgt.is_board else None}
    key = cache_key(cfg, target, versions, **options)
    cfile = cache_dir() / f"{key}.json"
    out = Path(out_dir) if out_dir is not None else _default_out_dir(target, key)
    if use_cache and cfile.is_file():
        try:
            res = SynthResult.read(cfile)
        except (ValueError, TypeError, KeyError):
            res = None
        if res is not None:
            res.cached = True       # elapsed_s stays that of the run that made it
            say("cache", f"cached result {cfile}")
            try:
                res.write(out / "result.json")
            except OSError:
                pass
            return res

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    stage_s: dict[str, float] = {}

    say("elaborate", f"{target}: elaborating {cfg.key()}")
    t = time.monotonic()
    if tgt.is_board:
        plat = tgt.platform_class(target_mhz)()
        plan = plat.prepare(BoardTop(cfg, ram_bytes=ram_bytes, button=tgt.button,
                                     max_leds=tgt.leds), name="top",
                            script_after_read=KEEP_REPLICAS,
                            **({"synth_opts": tgt.synth_opts} if tgt.synth_opts else {}))
        plan.extract(out)
    else:
        from amaranth.back import rtlil

        from fluidnpu.hw.core import NPUCore
        (out / "top.il").write_text(rtlil.convert(NPUCore(cfg), name="top"))
        (out / "top.ys").write_text(GENERIC_SCRIPT)
    stage_s["elaborate"] = round(time.monotonic() - t, 2)

    files = {"yosys_log": "yosys.log"}
    ylog = out / "yosys.log"
    say("yosys", f"yosys ({versions['yosys']}) -> {ylog}")
    outputs = [out / "top.json"] if tgt.is_board else []
    stage_s["yosys"] = round(run_tool("yosys", ["-q", "-l", "yosys.log", "top.ys"], cwd=out,
                                      log=ylog, outputs=outputs, check_log=check_yosys_log,
                                      log_is_tool_log=True, timeout=timeout), 2)
    try:
        stat = parse_yosys_stat(ylog.read_text(errors="replace"), "top")
    except ValueError as e:
        raise ToolFailed(f"yosys: {e} (log: {ylog})", ylog) from None
    cells = stat["by_type"]

    fits: bool | None = None
    reason = ""
    util: dict = {}
    fmax = None
    crit = None
    if tgt.is_board:
        fits, reason, util, fmax, crit = _place_and_route(tgt, out, seed, target_mhz, timeout,
                                                          say, stage_s, files, versions,
                                                          pack_only=pack_only)
        if fits and bitstream and not pack_only:
            _pack(tgt, out, timeout, say, stage_s, files)

    counts, available = resources_from(tgt.family, cells, util, tgt.capacity)
    shares = {k: round(counts[k] / available[k], 4) for k in counts
              if available.get(k)}
    res = SynthResult(
        target=target, device=tgt.device,
        luts=counts["luts"], ffs=counts["ffs"], dsps=counts["dsps"], brams=counts["brams"],
        fmax_mhz=round(fmax, 2) if fmax is not None else None, fits=fits, reason=reason,
        target_mhz=target_mhz,
        timing_met=(fmax >= target_mhz) if (fmax is not None and target_mhz) else None,
        util=shares, available={k: v for k, v in available.items() if v},
        resources=util, cells=cells,
        critical_path=crit, config=cfg.to_dict(), cfg_key=cfg.key(), tool_versions=versions,
        seed=seed if tgt.is_board else None, elapsed_s=round(time.monotonic() - t0, 1),
        stage_s=stage_s, out_dir=str(out.resolve()), files=files, cache_key=key)
    res.write(out / "result.json")
    if use_cache:
        try:
            res.write(cfile)
        except OSError:
            pass
    say("done", res.summary().splitlines()[0])
    return res


def _place_and_route(tgt: Target, out: Path, seed: int, target_mhz: float,
                     timeout: float | None, say: Progress, stage_s: dict, files: dict,
                     versions: dict, *, pack_only: bool = False):
    """Run nextpnr; returns ``(fits, reason, utilisation, fmax, critical_path)``."""
    nlog = out / "nextpnr.log"
    report = out / "report.json"
    for stale in (nlog, report):
        stale.unlink(missing_ok=True)
    result_file = out / ("top.config" if tgt.family == "ecp5" else "top.asc")
    args = [*tgt.nextpnr_args, "--json", "top.json", "--log", "nextpnr.log",
            "--report", "report.json", "--seed", str(seed), "--timing-allow-fail", "--quiet"]
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
    try:
        run_tool(tgt.nextpnr, args, cwd=out, log=nlog,
                 outputs=[report] if pack_only else [report, result_file],
                 check_log=check_nextpnr_log, log_is_tool_log=True, timeout=timeout)
    except ToolFailed as e:
        stage_s["nextpnr"] = round(time.monotonic() - t, 2)
        text = nlog.read_text(errors="replace") if nlog.exists() else ""
        parsed = parse_nextpnr_log(text)
        over, why = overflowing(parsed["utilization"], parsed["errors"])
        if over:
            say("nextpnr", f"does not fit: {why}")
            return False, why, parsed["utilization"], None, None
        raise
    stage_s["nextpnr"] = round(time.monotonic() - t, 2)
    if pack_only:
        try:
            util = parse_nextpnr_report(json.loads(report.read_text()))["utilization"]
        except (ValueError, KeyError, TypeError):
            util = {}
        util = util or parse_nextpnr_log(nlog.read_text(errors="replace"))["utilization"]
        over, why = overflowing(util, [])
        return not over, why, util, None, None
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
    return True, "", rep["utilization"], fmax, rep["critical_path"]


def _pack(tgt: Target, out: Path, timeout, say: Progress, stage_s: dict, files: dict) -> None:
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
