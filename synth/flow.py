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

from fluidnpu.hw.config import HwConfig

from .choices import FLOORPLANS
from .ctrlsets import FFS_PER_TILE, describe_control_sets, ff_control_sets
from .floorplan import apply_floorplan
from .parse import parse_yosys_stat
from .pnr import Progress, pack, place_and_route, resolve_placer, resolve_router, seed_sweep
from .result import SynthResult, resources_from
from .targets import ECP5_SYNTH_FIRST, TARGETS, Target, ecp5_rest, get_target
from .tools import SynthError, ToolFailed, check_yosys_log, find_tool, run_tool, tool_version
from .top import DEFAULT_RAM_BYTES, BoardTop

__all__ = ["synthesize", "SynthResult", "SynthError", "TARGETS", "cache_dir", "cache_key",
           "sources_hash", "parse_seeds"]

_SYNTH_DIR = Path(__file__).resolve().parent
_HW_DIR = Path(__import__("fluidnpu.hw", fromlist=["config"]).__file__).resolve().parent

#: run right after reading the design: the flip-flops of signals named ``*_rep*`` are
#: register replicas (hw/pe_array.py: one copy of a high-fanout control register per PE, so
#: that each copy drives a small, local net); ``keep`` stops yosys from merging the
#: identical copies back into one. ``%a`` adds the wires aliased to a replica: when a copy
#: drives a port directly (the drain's ``s0_paddr_rep*`` are the partial-sum memories' read
#: addresses), Amaranth names the flip-flop's net after the port and the replica's name is
#: only an alias, which ``%ci1`` alone does not follow (the copies were merged until 4 Dec
#: 2026).
KEEP_REPLICAS = "setattr -set keep 1 w:*_rep* %a %ci1 t:$dff %i"

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
FLOW_MODULES = ("__init__.py", "choices.py", "congestion.py", "ctrlsets.py", "floorplan.py",
                "flow.py", "parse.py", "pnr.py", "result.py", "targets.py", "top.py")


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


#: the most nextpnr seeds one run may sweep
MAX_SEEDS = 64


def parse_seeds(text: str) -> tuple[int, ...]:
    """nextpnr seeds from ``"1-4"``, ``"1,3,8"`` or ``"2,5-7"`` (each seed once, in order)."""
    seeds: dict[int, None] = {}          # insertion-ordered set
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            raise ValueError(f"seeds = {text!r}: {part!r} is not a seed or a range A-B of "
                             "non-negative integers") from None
        if b < a:
            raise ValueError(f"seeds = {text!r}: the range {part!r} is empty (A-B needs A <= B)")
        if b - a + 1 > MAX_SEEDS:      # refused before it is expanded
            raise ValueError(f"seeds = {text!r}: the range {part!r} holds {b - a + 1:,} seeds; at most "
                             f"{MAX_SEEDS} are allowed")
        for v in range(a, b + 1):
            seeds[v] = None
        if len(seeds) > MAX_SEEDS:
            raise ValueError(f"seeds = {text!r}: more than {MAX_SEEDS} seeds; at most {MAX_SEEDS} are allowed")
    return tuple(seeds)


def seed_list(raw, *, allow_repeats: bool = True) -> tuple[int, ...]:
    """nextpnr seeds from a string (:func:`parse_seeds`) or a list of non-negative integers;
    a repeated seed is dropped, or refused when ``allow_repeats`` is false."""
    if isinstance(raw, str):
        return parse_seeds(raw)
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"seeds = {raw!r}: must be a list of non-negative integers or a string like \"1-4\"")
    seeds = tuple(raw)
    if not seeds:
        raise ValueError("seeds = (): give at least one nextpnr seed")
    for v in seeds:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"seeds: {v!r}: a nextpnr seed must be a non-negative integer")
    if len(set(seeds)) != len(seeds):
        if not allow_repeats:
            raise ValueError(f"seeds = {seeds}: a seed is given twice")
        seeds = tuple(dict.fromkeys(seeds))
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"seeds = {raw!r}: {len(seeds)} seeds; at most {MAX_SEEDS} are allowed")
    return seeds


def _default_out_dir(target: str, key: str) -> Path:
    from fluidnpu.hw.runner import build_root
    return build_root() / "synth" / f"{target}-{key[:12]}"


def synthesize(cfg: HwConfig, target: str = "ulx3s-85f", out_dir: str | Path | None = None, *,
               seed: int = 1, seeds=None, jobs: int | None = None,
               target_mhz: float | None = None,
               progress: Progress | None = None, use_cache: bool = True,
               bitstream: bool = True, pack_only: bool = False,
               ram_bytes: int = DEFAULT_RAM_BYTES,
               timeout: float | None = None, placer: str = "auto", router: str = "auto",
               floorplan: str = "auto", congestion: bool = False) -> SynthResult:
    """Synthesise ``cfg`` for ``target`` and return its resources, Fmax and fit.

    * ``out_dir``: folder for the design, logs (``yosys.log``, ``nextpnr.log``),
      nextpnr's ``report.json``, the bitstream and ``result.json``; default
      ``synth/<target>-<key>`` in the build folder (:func:`fluidnpu.hw.runner.build_root`).
    * ``seed``: nextpnr's placement seed. ``target_mhz``: the clock constraint nextpnr
      works for (default ``cfg.clock_mhz``); ``fmax_mhz`` is what it reached.
    * ``seeds``: a seed sweep instead of one seed: yosys once, then place and route with
      each seed (in ``out_dir/seed-N/``, ``jobs`` at once, default one per CPU); the
      result is the best Fmax's (its logs, report and bitstream are copied to ``out_dir``),
      with every seed's Fmax in ``seed_fmax``. Placement alone moves Fmax by 10-20 % on
      these designs (docs/synthesis.md), so one seed says little about a design.
    * ``progress(stage, message)``: called at each stage (``cache``, ``elaborate``,
      ``yosys``, ``nextpnr``, ``pack``, ``done``).
    * ``bitstream``: also run ecppack / icepack (board targets).
    * ``pack_only``: stop nextpnr after packing (a minute instead of an hour for a big
      core): resources and ``fits`` from the packed design (every resource within the
      device), no Fmax and no bitstream. For quick design-space sweeps.
    * ``timeout``: seconds allowed per tool run.
    * ``placer``: nextpnr's placer, ``"heap"`` (nextpnr's default, analytic),
      ``"static"`` (electrostatic; on large, dense designs it spreads cells better and
      routing converges where HeAP's placement leaves it congested, docs/synthesis.md)
      or ``"auto"`` (static on ECP5, HeAP on iCE40: :data:`PLACERS`).
    * ``router``: nextpnr's router, ``"router2"`` (on ECP5 with timing-driven rip-up),
      ``"router1"`` (slower; routes dense designs whose router2 overuse levels off) or
      ``"auto"`` (router2 on ECP5, router1 on iCE40: :data:`ROUTERS`).
    * ``floorplan``: ``"auto"`` pins each operand memory's block RAMs side by side in one
      row of an ECP5 (:mod:`fluidnpu.synth.floorplan`; what it did is in ``floorplan``
      of the result), ``"none"`` leaves them to nextpnr.
    * ``congestion``: have router2 write its congestion per net every iteration and keep a
      summary by design unit and signal family (:mod:`fluidnpu.synth.congestion`) in the
      result's ``congestion`` and ``congestion.json``: which part of the design the
      router cannot fit. ECP5 targets (router2) only.

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
    seeds = seed_list(tuple((seed,) if seeds is None else seeds), allow_repeats=False)
    if len(seeds) > 1 and not tgt.is_board:
        raise ValueError(f"seeds = {seeds}: {target} has no place and route to seed")
    if len(seeds) > 1 and pack_only:
        raise ValueError(f"seeds = {seeds}: pack_only stops before placement, so every seed "
                         "gives the same result; give one seed")
    placer = resolve_placer(placer, tgt.family)
    router = resolve_router(router, tgt.family)
    if floorplan not in FLOORPLANS:
        raise ValueError(f"floorplan = {floorplan!r}: must be one of {', '.join(FLOORPLANS)}")
    if congestion and (tgt.family != "ecp5" or router != "router2"):
        raise ValueError(f"congestion: needs nextpnr's router2 on an ECP5 target; {target} "
                         f"routes with {router}")
    if congestion and pack_only:
        raise ValueError("congestion: pack_only stops before routing; give one or the other")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs = {jobs!r}: must be a positive integer")
    seed = seeds[0]

    for key in tgt.tools():
        find_tool(key)          # ToolMissing before any work
    versions = {key: tool_version(key) for key in tgt.tools()}
    options = {"seed": (seed if len(seeds) == 1 else list(seeds)) if tgt.is_board else None,
               "target_mhz": target_mhz,
               "ram_bytes": ram_bytes if tgt.is_board else None,
               "bitstream": bool(bitstream) if tgt.is_board else None,
               "pack_only": bool(pack_only) if tgt.is_board else None,
               # (only then a key: cached results of HeAP runs keep their keys)
               **({"placer": placer} if tgt.is_board and placer != "heap" else {}),
               # (only then a key: results routed with the family's default keep theirs)
               **({"router": router} if tgt.is_board
                  and router != resolve_router("auto", tgt.family) else {}),
               **({"congestion": True} if congestion else {}),
               "floorplan": floorplan if tgt.ebr_device else None}
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
                            script_after_read=KEEP_REPLICAS, **_synth_overrides(tgt, "top"))
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
    csets = fplan = None
    want_csets = tgt.family == "ecp5" and tgt.is_board
    want_fplan = floorplan == "auto" and bool(tgt.ebr_device)
    # the netlist parsed once for both (it was parsed twice until 6 Dec 2026)
    design = _read_netlist(out / "top.json", ylog) if want_csets or want_fplan else None
    if want_csets:
        csets = _control_sets(design, tgt, say, out / "top.json", ylog)
    if want_fplan:
        fplan = apply_floorplan(out / "top.json", tgt.ebr_device, design=design)
        say("floorplan", fplan.summary() if fplan else "no operand memories to pin")

    fits: bool | None = None
    reason = ""
    util: dict = {}
    fmax = None
    crit = None
    placed = None
    seed_fmax: dict = {}
    if tgt.is_board:
        if len(seeds) > 1:
            seed, pnr, seed_fmax = seed_sweep(tgt, out, seeds, jobs, target_mhz, timeout, say,
                                               stage_s, files, versions, placer=placer,
                                               router=router,
                                               congestion=congestion)
        else:
            pnr = place_and_route(tgt, out, seed, target_mhz, timeout, say, stage_s, files,
                                   versions, pack_only=pack_only, placer=placer, router=router,
                                   congestion=congestion)
        fits, reason, util, fmax, crit, placed = pnr[:6]
        if fits and fmax is not None and bitstream:      # routed (so not pack_only)
            pack(tgt, out, timeout, say, stage_s, files)

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
        critical_path=crit, floorplan=fplan.rows if fplan else None, ff_control_sets=csets,
        congestion=pnr.congestion if tgt.is_board else None,
        config=cfg.to_dict(), cfg_key=cfg.key(), tool_versions=versions,
        seed=seed if tgt.is_board else None, seed_fmax=seed_fmax,
        placer=placer if tgt.is_board else None, router=router if tgt.is_board else None,
        routed=(fmax is not None) if (tgt.is_board and fits and not pack_only) else None,
        fmax_placed_mhz=round(placed, 2) if placed is not None else None,
        elapsed_s=round(time.monotonic() - t0, 1),
        stage_s=stage_s, out_dir=str(out.resolve()), files=files, cache_key=key)
    res.write(out / "result.json")
    if use_cache and res.routed is not False:   # a run cut by the timeout is not a result to keep
        try:
            res.write(cfile)
        except OSError:
            pass
    say("done", res.summary().splitlines()[0])
    return res


def _read_netlist(netlist: Path, ylog: Path) -> dict:
    """yosys' JSON netlist, parsed; a missing or broken one is yosys' failure."""
    try:
        return json.loads(netlist.read_text())
    except (ValueError, OSError) as e:
        raise ToolFailed(f"yosys: {netlist}: {e}", ylog) from None


def _control_sets(design: dict, tgt: Target, say: Progress, netlist: Path, ylog: Path) -> dict:
    """The flip-flops' control sets of ``design`` (``netlist`` parsed) and the logic tiles
    they need at least (with ``tiles``, the device's), said and returned."""
    try:
        cs = ff_control_sets(design)
    except ValueError as e:
        raise ToolFailed(f"yosys: {netlist}: {e}", ylog) from None
    cs["tiles"] = tgt.capacity["TRELLIS_FF"] // FFS_PER_TILE
    say("control sets", describe_control_sets(cs))
    return cs


def _synth_overrides(tgt: Target, top: str) -> dict:
    """Amaranth's yosys-script overrides for ``tgt``: its ``synth_opts``; on ECP5 the
    two-part synthesis (:func:`~fluidnpu.synth.targets.ecp5_two_part`): Amaranth runs
    ``synth_ecp5`` with its options, then ``script_after_synth``."""
    if tgt.family != "ecp5":
        return {"synth_opts": tgt.synth_opts} if tgt.synth_opts else {}
    cmd = f"synth_ecp5 {tgt.synth_opts + ' ' if tgt.synth_opts else ''}-top {top}"
    return {"synth_opts": f"{tgt.synth_opts} {ECP5_SYNTH_FIRST}".strip(),
            "script_after_synth": ecp5_rest(cmd)}


