"""``fluidnpu board build`` and ``fluidnpu board run``: the NPU in a LiteX SoC on a ULX3S
(docs/board.md). Added to the ``fluidnpu`` click group by cli.py."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from fluidnpu.cli_common import config_options, jsonable, load_config, need_extra
from fluidnpu.outputs import out_dir as _out_dir, staged_output
from fluidnpu.sched import SCHEDULERS
from fluidnpu.synth.choices import ROUTERS

__all__ = ["board"]

BOARD_NAMES = ("ulx3s-85f",)
DEFAULT_OUT = Path("out/ulx3s")
#: nextpnr seeds ``board build`` tries in turn, and how long each may take: router2 did not
#: converge with seed 1 on the SoC of 92ebdb6 (its overuse rose from 1,041 to 5,430 wires
#: after an hour) where seed 2 routed in about 17 minutes (docs/board.md)
DEFAULT_SEEDS = "1,2,3"
DEFAULT_PNR_TIMEOUT_MIN = 60.0


@click.group()
def board():
    """The NPU on a board: build the SoC's bitstream, run a network on it over the UART."""


def _build_errors():
    from fluidnpu.synth.board_build import TimingFailed
    from fluidnpu.synth.litex_soc import BoardExtraMissing
    from fluidnpu.synth.tools import SynthError
    return TimingFailed, BoardExtraMissing, SynthError


@board.command("build")
@click.option("--board", "board_name", type=click.Choice(BOARD_NAMES), default="ulx3s-85f", show_default=True,
              help="The board (LiteX-Boards' platform, its SDRAM and CRG).")
@config_options
@click.option("--sys-clk-mhz", type=click.FloatRange(25, 100), default=40.0, show_default=True,
              help="The SoC's clock (NPU, bus, SDRAM), MHz.")
@click.option("--baud", type=click.IntRange(9600, 3_000_000), default=1_000_000, show_default=True,
              help="The UARTBone's rate, baud (board run uses the same).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="One nextpnr seed (instead of --seeds).")
@click.option("--seeds", "seeds_text", metavar="LIST", default=DEFAULT_SEEDS, show_default=True,
              help="nextpnr seeds tried in turn until one meets timing (e.g. 1-4 or 1,3,8); a seed "
                   "whose router does not finish within --pnr-timeout gives way to the next.")
@click.option("--pnr-timeout", "pnr_timeout_min", type=click.FloatRange(min=1), default=DEFAULT_PNR_TIMEOUT_MIN,
              show_default=True, metavar="MINUTES",
              help="Stop a seed's place and route after this long (router2 can fail to converge on "
                   "a seed: its overuse grows instead of falling; docs/board.md).")
@click.option("--router", type=click.Choice(ROUTERS), default="auto", show_default=True,
              help="nextpnr's router; auto is router2 with timing-driven rip-up. router1 is slower "
                   "but routes where router2's overuse does not converge (docs/board.md).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, callback=_out_dir,
              help="Folder for the bitstream (soc.bit), board.json, the NPU's Verilog and registers, logs.")
@click.option("--json", "as_json", is_flag=True, help="Print board.json's content.")
def build_cmd(board_name, config_path, sets, sys_clk_mhz, baud, seed, seeds_text, pnr_timeout_min, router,
              out, as_json):
    """Build the SoC (no CPU; SDRAM through LiteDRAM; UARTBone; the NPU) into a bitstream
    with yosys, nextpnr-ecp5 and ecppack; report resources and Fmax. Exit status 1 if the
    Fmax is below the SoC clock (no bitstream is written then)."""
    need_extra("board", "fluidnpu board build")
    need_extra("synth", "fluidnpu board build")
    from fluidnpu.synth.flow import parse_seeds
    if seed is not None:
        if seeds_text != DEFAULT_SEEDS:
            raise click.UsageError("give --seed or --seeds, not both")
        seeds = (seed,)
    else:
        try:
            seeds = parse_seeds(seeds_text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--seeds") from None
    cfg = load_config(config_path, sets)
    if cfg.mem_bytes != 4 and cfg.mem_bytes_derived:
        # the SoC's bus is 32 bits: a port width the configuration did not fix is 4 bytes
        cfg = cfg.replace(mem_bytes=4)
        if not as_json:
            click.echo("[config] mem_bytes = 4: the SoC's bus is 32 bits (the configuration "
                       "leaves the memory port's width to the target)", err=True)
    if cfg.mem_bytes != 4:
        raise click.BadParameter(f"the configuration's mem_bytes = {cfg.mem_bytes}: the SoC's bus is 32 bits, "
                                 f"so the NPU's memory port must be 4 bytes", param_hint="--config/--set")
    from fluidnpu.synth.board_build import build_board
    from fluidnpu.synth.tools import ToolMissing
    TimingFailed, BoardExtraMissing, SynthError = _build_errors()

    def progress(stage, message):
        if not as_json:
            click.echo(f"[{stage}] {message}", err=True)
    try:
        info = build_board(cfg, out, board=board_name, sys_clk_mhz=sys_clk_mhz, baud=baud, seeds=seeds,
                           router=router, pnr_timeout=60 * pnr_timeout_min, progress=progress)
    except ToolMissing as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except TimingFailed as e:
        if as_json:
            click.echo(json.dumps(jsonable(e.info), indent=1))
        else:
            click.echo(_summary(e.info, out))
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (BoardExtraMissing, SynthError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps(jsonable(info), indent=1) if as_json else _summary(info, out))


def _summary(info: dict, out: Path) -> str:
    r = info["resources"]

    def res(k):
        v = r[k]
        return f"{v['used']}" + (f" ({100 * v['share']:.0f}%)" if v.get("share") is not None else "")
    lines = [f"{info['board']} ({info['device']}), SoC at {info['sys_clk_mhz']:g} MHz, UARTBone at {info['baud']} baud",
             f"  LUTs {res('luts')}, FFs {res('ffs')}, DSPs {res('dsps')}, EBR {res('brams')}",
             f"  Fmax {info['fmax_mhz']:.1f} MHz (SoC clock {info['sys_clk_mhz']:g} MHz: "
             f"{'met' if info['timing_met'] else 'MISSED'}); clocks: "
             + ", ".join(f"{c} {v['achieved']:.1f}/{v['constraint']:g}" for c, v in info["clocks"].items()),
             f"  NPU CSRs at {info['npu_csr_base']:#010x}; NPU address 0 = SoC {info['main_ram_base'] + info['npu_mem_offset']:#010x} "
             f"(SDRAM offset {info['npu_mem_offset']:#x}, {info['npu_mem_bytes'] >> 20} MiB)",
             f"  {info['elapsed_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in info["stage_s"].items()) + ")"]
    if "bitstream" in info["files"]:
        lines.append(f"  bitstream {out / info['files']['bitstream']}: program it with "
                     f"'openFPGALoader -b ulx3s {out / info['files']['bitstream']}'")
    return "\n".join(lines)


def _load_build(ctx, param, value: Path):
    """board run --build: the folder board build wrote (board.json and the register module);
    not read with ``--sim soc`` (the simulated SoC is generated from the configuration)."""
    if ctx.params.get("sim") is not None:
        return value, None
    f = value / "board.json"
    if not f.is_file():
        raise click.BadParameter(f"{value}: no board.json (build one with 'fluidnpu board build --out {value}')",
                                 ctx=ctx, param=param)
    try:
        info = json.loads(f.read_text())
        regs = value / info["files"]["regs"]
        info["config"], info["npu_csr_base"], info["csr"], info["sdram_init"]    # noqa: B018 - present
    except (ValueError, KeyError, TypeError) as e:
        raise click.BadParameter(f"{f}: not a board.json written by 'fluidnpu board build' ({e})",
                                 ctx=ctx, param=param) from None
    if "bitstream" not in info["files"]:
        raise click.BadParameter(f"{value}: its build missed timing and has no bitstream", ctx=ctx, param=param)
    if not regs.is_file():
        raise click.BadParameter(f"{value}: {regs.name} is missing", ctx=ctx, param=param)
    return value, info


def _check_port(ctx, param, value: str | None):
    """A device path must exist (pyserial URLs such as socket://host:port pass)."""
    if value is None:
        if ctx.params.get("sim") is None:
            raise click.UsageError("Missing option '--port' (the board's serial port), or '--sim soc' to run on "
                                   "the simulated SoC", ctx=ctx)
        return None
    if ctx.params.get("sim") is not None:
        raise click.BadParameter(f"{value}: --sim {ctx.params['sim']} runs no board; give one of --port and --sim",
                                 ctx=ctx, param=param)
    if "://" not in value and not Path(value).exists():
        raise click.BadParameter(f"{value}: no such serial device (the ULX3S's USB serial is usually "
                                 f"/dev/ttyUSB0; 'ls /dev/ttyUSB*' after plugging it in)", ctx=ctx, param=param)
    return value


@board.command("run")
@click.option("--sim", type=click.Choice(("soc", "soc-uart")), is_eager=True,
              help="Run on the simulated SoC instead of a board: the board build's LiteX SoC with LiteDRAM's "
                   "SDRAM model under Verilator (the co-simulation's NPU configuration at 40 MHz; docs/board.md); "
                   "soc: the host's bytes on UARTBone's byte streams; soc-uart: on the UART's pins at --baud "
                   "(bit level, many times slower to simulate). Needs no --port or --build.")
@click.option("--port", callback=_check_port,
              help="The board's serial port (a device, or a pyserial URL such as socket://HOST:PORT).")
@click.option("--build", "build", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, callback=_load_build, help="The folder 'fluidnpu board build' wrote.")
@click.option("--model", default="digits", show_default=True,
              help="The network to serve (the scenario's model; it must ship weights and test inputs).")
@click.option("--scenario", "scenario_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Single-model scenario TOML (default: the shipped digits-sensors scenario).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="fluid", show_default=True)
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=40, show_default=True,
              help="Number of requests (the first N of the scenario's draw).")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--load", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Every device's arrival rate times this (the UART host is slow: docs/board.md).")
@click.option("--baud", type=click.IntRange(9600, 5_000_000), default=None,
              help="The UART's rate [default: the one the bitstream was built for]; must equal it. With --sim "
                   "soc: the simulated SoC's rate [default 1000000, the board build's], at most 5000000.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Seconds to wait for an answer of the board before giving up.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), callback=_out_dir,
              help="Write requests.csv and summary.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_cmd(sim, port, build, model, scenario_path, scheduler, n_requests, seed, load, baud, timeout, out, as_json):
    """Serve a trace of requests on the board: load the network into the SDRAM, let the
    scheduler drive admissions, preemptions and merges through the NPU's CSRs over
    UARTBone, read back every result, check it against the numpy reference and print the
    metrics of ``fluidnpu cosim``, next to the serving simulator's FBE mode on the same trace
    (with the board's memory timing, ``serve --memory ulx3s-sdram``)."""
    need_extra("board", "fluidnpu board run")
    if sim is not None:
        return _run_sim(sim, model, scenario_path, scheduler, n_requests, seed, load, baud, out, as_json)
    bdir, info = build
    if baud is not None and baud != info["baud"]:
        raise click.BadParameter(f"{baud}: the bitstream in {bdir} was built for {info['baud']} baud",
                                 param_hint="--baud")
    from fluidnpu.board.driver import load_regs
    from fluidnpu.board.serve import run_on_transport
    from fluidnpu.board.uartbone import UartBone, UartBoneError, UartBoneTransport, check_memory, init_sdram
    s = _setup(info, scenario_path, model, scheduler, n_requests, seed, load)
    if len(s.mem_image) > info["npu_mem_bytes"]:
        raise click.UsageError(f"the network and {n_requests} requests need {len(s.mem_image)} bytes; the NPU "
                               f"sees {info['npu_mem_bytes']} bytes of SDRAM")
    regs = load_regs(bdir / info["files"]["regs"])
    f = info["sys_clk_mhz"] * 1e6
    t0 = time.perf_counter()
    try:
        with UartBone(port, info["baud"], timeout=timeout) as bone:
            init_sdram(bone, info["csr"], info["sdram_init"])
            transport = UartBoneTransport(bone, csr_base=info["npu_csr_base"],
                                          mem_base=info["main_ram_base"] + info["npu_mem_offset"],
                                          mem_size=info["npu_mem_bytes"])
            check_memory(transport, len(s.mem_image))
            # the host spends ~0.1 ms per register access at 1 Mbaud: give each request seconds
            rec = run_on_transport(s, transport, regs, engine=f"board:{info['board']}", timeout_cycles=int(10 * f),
                                   max_cycles=int(f * (30 + 2 * len(s.requests))) + int(s.arrival_cycle[-1]),
                                   progress=None if as_json else _progress(len(s.requests)))
    except (UartBoneError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except _run_errors() as e:
        click.echo(f"error: the run stopped: {e}", err=True)
        sys.exit(1)
    _report(rec, s, {"board": info["board"], "port": port, "build": str(bdir)}, scheduler, model, seed, load,
            info["sys_clk_mhz"], time.perf_counter() - t0, out, as_json)


def _run_sim(sim, model, scenario_path, scheduler, n_requests, seed, load, baud, out, as_json):
    """``board run --sim soc|soc-uart``: the same serving code on the simulated SoC (sim/cosim/soc.py)."""
    from fluidnpu.hw.runner import SimError
    from fluidnpu.sim.cosim.run import COSIM_CONFIG
    from fluidnpu.sim.cosim.soc import SOC_SIM_BAUD, SOC_SIM_CLK_MHZ, run_soc_sim
    info = {"config": COSIM_CONFIG.to_dict(), "sys_clk_mhz": SOC_SIM_CLK_MHZ}
    s = _setup(info, scenario_path, model, scheduler, n_requests, seed, load)
    link = "uart" if sim == "soc-uart" else "stream"
    if link == "stream" and baud is not None:
        raise click.BadParameter(f"{baud}: --sim soc has no UART (the host's bytes go on the bridge's byte "
                                 f"streams); --baud applies to --sim soc-uart", param_hint="--baud")
    baud = SOC_SIM_BAUD if baud is None else baud
    if not as_json:
        click.echo(f"simulating the SoC (Verilator; a new configuration builds its model first, minutes): "
                   f"{len(s.requests)} requests, " + (f"UART at {baud} baud" if link == "uart" else
                                                      "host bytes on the bridge's streams"), err=True)
    t0 = time.perf_counter()
    try:
        rec = run_soc_sim(s, link=link, baud=baud)
    except SimError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except _run_errors() as e:
        click.echo(f"error: the run stopped: {e}", err=True)
        sys.exit(1)
    _report(rec, s, {"board": f"ulx3s-85f (simulated SoC, {link} link)", "link": link,
                     "baud": baud if link == "uart" else None}, scheduler, model, seed, load,
            SOC_SIM_CLK_MHZ, time.perf_counter() - t0, out, as_json)


def _report(rec, s, where: dict, scheduler, model, seed, load, sys_clk_mhz, wall_s, out, as_json):
    """The run's metrics next to the FBE mode's on the same trace; written to ``out``, printed."""
    from fluidnpu.sim.cosim.run import agreement, run_model
    model_rec = run_model(s)
    agr = agreement(model_rec, rec)
    res = {**where, "scheduler": scheduler, "model": model,
           "requests": len(s.requests), "seed": seed, "load": load, "sys_clk_mhz": sys_clk_mhz, "config": s.cfg.key(),
           "memory": "ulx3s-sdram", "summary": rec.result.summary(), "board_run": {"cycles": rec.extra["dut_cycles"],
                                                          "wall_s": wall_s,
                                                          "register_accesses": rec.extra["accesses"],
                                                          "samples_checked": rec.extra["logits_ok"]},
           "serve_fbe_mode": model_rec.result.summary(), "agreement": agr["agreement"], "agreement_detail": agr}
    if out is not None:
        with staged_output(out, "board-run") as st:
            rec.result.to_csv(st.path / "requests.csv")
            res["files"] = [str(st.final(n)) for n in ("requests.csv", "summary.json")]
            (st.path / "summary.json").write_text(json.dumps(jsonable(res), indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(jsonable(res), indent=1))
    else:
        _print_run(res, rec, model_rec)


def _run_errors():
    from fluidnpu.board.driver import DriverError
    from fluidnpu.sim.cosim.host import CosimError
    return DriverError, CosimError


def _setup(info, scenario_path, model, scheduler, n_requests, seed, load):
    """The co-simulation setup for the board's NPU (its configuration, clocked at the SoC's clock)."""
    import dataclasses

    from fluidnpu.hw.config import ConfigError, HwConfig
    from fluidnpu.sched import SchedulerError
    from fluidnpu.sim.memory import memory_timing
    from fluidnpu.sim.cosim.run import DEFAULT_SCENARIO, prepare
    from fluidnpu.sim.network import NetworkError
    from fluidnpu.sim.serving import ScenarioError, load_scenario, scale_rates
    from fluidnpu.sim.workloads.errors import WorkloadError
    try:
        cfg = dataclasses.replace(HwConfig(**info["config"]), clock_mhz=float(info["sys_clk_mhz"]))
        sc = load_scenario(scenario_path or DEFAULT_SCENARIO)
        names = [m.name for m in sc.models]
        if names != [model]:
            raise click.BadParameter(f"{model}: the scenario {scenario_path or DEFAULT_SCENARIO} serves {names}; "
                                     f"give a scenario of {model!r} with --scenario", param_hint="--model")
        if load != 1.0:
            sc = scale_rates(sc, load)
        # the board's memory timing: the mapper picks the FBE's policies for it and the FBE
        # mode's comparison row models it
        return prepare(sc, (scheduler, {}), cfg=cfg, requests=n_requests, seed=seed, mem=memory_timing("ulx3s-sdram"))
    except (ConfigError, ScenarioError, SchedulerError, NetworkError, WorkloadError) as e:
        raise click.UsageError(str(e)) from None


def _progress(n):
    def report(cycles, done):
        click.echo(f"\r  cycle {cycles:,}: {done} of {n} requests done", err=True, nl=False)
    return report


def _print_run(res, rec, model_rec):
    from fluidnpu.cli_common import print_engines
    click.echo("", err=True)
    print_engines(f"{res['model']} on {res['board']}: {res['scheduler']}, {res['requests']} requests, "
                  f"seed {res['seed']}, SoC at {res['sys_clk_mhz']:g} MHz",
                  (("board", rec), ("FBE mode", model_rec)))
    s = res["summary"]
    click.echo("exits per head: " + "; ".join(f"{k} {v}" for k, v in s["exits_per_head"].items()))
    b = res["board_run"]
    click.echo(f"board: {b['cycles']:,} NPU cycles, {b['register_accesses']:,} register accesses in "
               f"{b['wall_s']:.1f} s; {b['samples_checked']} results bit-exact with the numpy reference")
    a = res["agreement_detail"]
    click.echo(f"completion cycles equal to the FBE mode's on {a['requests'] - a['mismatches']} of {a['requests']} "
               f"requests (max difference {a['max_abs_diff_cycles']} cycles: the host decides through the bridge and "
               f"the SoC's SDRAM path is not the cycle model's memory; docs/board.md)")
    for f in res.get("files", []):
        click.echo(f"wrote {f}")
