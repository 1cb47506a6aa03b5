"""The ``fluidnpu`` command line: generate the NPU, run a GEMM on its RTL, show a config."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from fluidnpu import __version__
from fluidnpu.cli_common import atomic_write, config_options, fail, load_config, need_extra
from fluidnpu.hw.config import ConfigError, HwConfig
from fluidnpu.metrics import gemm_metrics
from fluidnpu.outputs import out_dir as _out_dir, out_file as _out_file, sigterm_as_interrupt
from fluidnpu.synth.choices import FLOORPLANS, PLACERS, ROUTERS
from fluidnpu.synth.targets import TARGETS

__all__ = ["main"]

SIMULATORS = ("icarus", "verilator")
DEMO_SHAPE = (37, 300, 23)


class _Group(click.Group):
    """A click group that reports a :class:`ConfigError` as ``error: ...`` with exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fluidnpu")
def main():
    """fluidnpu: Fluid Batching NPU generator and co-simulator."""
    # SIGTERM (kill, a batch system's stop) unwinds like Ctrl-C: run folders and
    # simulator processes are cleaned up, half-written outputs removed.
    click.get_current_context().with_resource(sigterm_as_interrupt())


# -- helpers of the commands here ------------------------------------------------------

def _derived(cfg: HwConfig) -> dict:
    return {
        "lanes": cfg.lanes,
        "elem_bytes": cfg.elem_bytes,
        "elems_per_beat": cfg.elems_per_beat,
        "x_depth": cfg.x_depth,
        "w_depth": cfg.w_depth,
        "data_range": [cfg.data_min, cfg.data_max],
        "bp_choices": list(cfg.bp_choices),
        "k_choices": list(cfg.k_choices),
        "policies": len(cfg.policies),
        # mem_bytes was left to the array (hw.mem_bytes then shows the width it took)
        "mem_bytes_derived": cfg.mem_bytes_derived,
    }


def _print_config(cfg: HwConfig, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in cfg.to_dict().items():
        table.add_row(name, str(value))
    table.add_section()
    for name, value in _derived(cfg).items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(f"[dim]{name}[/dim]", text)
    Console().print(table)


#: what ``generate --top`` can emit: the GEMM core alone, or the NPU with its FBE
TOPS = {"core": "fluidnpu_core", "npu": "fluidnpu_npu"}


#: ``generate --bus``: none (the bare ports) or the Wishbone-wrapped top (docs/bus.md)
BUSES = ("none", "wishbone")


def _hdl_text(cfg: HwConfig, rtlil: bool, top: str = "core", bus: str = "none") -> tuple[str, str]:
    """``(module name, Verilog or RTLIL text)`` of the selected top."""
    from amaranth.back import rtlil as rtlil_back, verilog

    if bus == "wishbone":
        from fluidnpu.hw.bus_top import BUS_TOPS
        cls, name = BUS_TOPS[top]
        design = cls(cfg)
    elif top == "core":
        from fluidnpu.hw.core import NPUCore
        design, name = NPUCore(cfg), TOPS[top]
    else:
        from fluidnpu.hw.fbe import FluidNPU
        design, name = FluidNPU(cfg), TOPS[top]
    back = rtlil_back if rtlil else verilog
    return name, back.convert(design, name=name)


def _write_hdl(cfg: HwConfig, path: Path, rtlil: bool, top: str = "core") -> int:
    return atomic_write(path, _hdl_text(cfg, rtlil, top)[1])


def _regmap_files(cfg: HwConfig, top: str, output: Path) -> dict[Path, str]:
    """The register map files written next to a wrapped top: ``<stem>_regs.{h,py,md}``."""
    from fluidnpu.hw.regmap import regmap
    from fluidnpu.hw.regmap_render import to_c, to_markdown, to_python
    rm = regmap(cfg, top)
    stem = output.with_suffix("").name
    return {output.with_name(f"{stem}_regs.h"): to_c(rm),
            output.with_name(f"{stem}_regs.py"): to_python(rm),
            output.with_name(f"{stem}_regs.md"): to_markdown([rm], title=f"Registers of {stem}")}


def _compare(out: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
    """Whether ``out`` equals ``ref``, and a one-line description of the first difference."""
    out = np.asarray(out)
    if out.shape != ref.shape:
        return False, f"output shape {out.shape}, expected {ref.shape}"
    bad = np.argwhere(out != ref)
    if not len(bad):
        return True, "bit-exact"
    r, c = bad[0]
    return False, (f"{len(bad)} of {ref.size} elements differ; first at [{r}, {c}]: "
                   f"got {int(out[r, c])}, expected {int(ref[r, c])}")


def _out_dtype(cfg: HwConfig, requant: bool):
    if not requant:
        return np.int32
    return np.int8 if cfg.elem_bytes == 1 else np.int16


# -- generate ---------------------------------------------------------------------------

@main.command()
@config_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), callback=_out_file,
              help="Output file (Verilog, or RTLIL with --rtlil).")
@click.option("--rtlil", is_flag=True, help="Write RTLIL instead of Verilog.")
@click.option("--top", type=click.Choice(sorted(TOPS)), default="core", show_default=True,
              help="core: the GEMM core (module fluidnpu_core); npu: the NPU with its Fluid Batching "
                   "Engine, descriptor memory, control table and exit unit (module fluidnpu_npu, docs/fbe.md).")
@click.option("--bus", type=click.Choice(BUSES), default="none", show_default=True,
              help="none: the top's own stream ports; wishbone: the top wrapped with a Wishbone B4 "
                   "pipelined memory master and a Wishbone CSR slave (module fluidnpu_core_wb / "
                   "fluidnpu_npu_wb), its register map written next to it as <stem>_regs.h, .py "
                   "and .md (docs/bus.md).")
def generate(config_path, sets, output, rtlil, top, bus):
    """Generate the NPU core, or the whole NPU with its FBE, as Verilog or RTLIL."""
    cfg = load_config(config_path, sets)
    _print_config(cfg, f"{TOPS[top]} parameters")
    name, text = _hdl_text(cfg, rtlil, top, bus)
    extra = _regmap_files(cfg, top, output) if bus != "none" else {}
    if extra:
        # the top and its register files are one result: published together (an interrupt
        # leaves the old set or the new one, never a new top beside old register files)
        from fluidnpu.outputs import staged_output
        with staged_output(output.parent, "generate", manifest=False) as st:
            for path, body in {output: text, **extra}.items():
                atomic_write(st.path / path.name, body)
    else:
        atomic_write(output, text)
    size = output.stat().st_size
    click.echo(f"wrote {output} ({'RTLIL' if rtlil else 'Verilog'}, module {name}, {size:,} bytes)")
    for path in extra:
        click.echo(f"wrote {path} (register map)")


@main.command()
@config_options
@click.option("--top", type=click.Choice(sorted(TOPS)), default="core", show_default=True,
              help="Lint the core alone or the NPU with its FBE.")
@click.option("--bus", type=click.Choice(BUSES), default="none", show_default=True,
              help="Lint the top as generate --bus writes it.")
def lint(config_path, sets, top, bus):
    """Lint the generated Verilog with Verilator -Wall; exit 1 on errors or unexplained warnings."""
    import tempfile

    from fluidnpu.hw.lint import lint_verilog

    cfg = load_config(config_path, sets)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "npu.v"
        name, text = _hdl_text(cfg, False, top, bus)
        atomic_write(path, text)
        rep = lint_verilog(path, top=name)
    click.echo(rep.format())
    click.echo("explained in docs/lint.md" if rep.ok else "FINDINGS: errors or warning categories not explained")
    if not rep.ok:
        click.get_current_context().exit(1)


@main.command()
@config_options
@click.option("--top", type=click.Choice(["core", "npu", "all"]), default="core", show_default=True,
              help="The wrapped top whose map to write; all (Markdown only): both, as docs/registers.md.")
@click.option("--format", "fmt", type=click.Choice(["md", "c", "py"]), default="md", show_default=True,
              help="md: Markdown tables; c: a C header; py: a self-contained Python module.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), callback=_out_file,
              help="Output file (default: standard output).")
def regmap(config_path, sets, top, fmt, out_path):
    """Write the register map of the Wishbone-wrapped NPU (docs/registers.md)."""
    from fluidnpu.hw.regmap import regmap as make_map
    from fluidnpu.hw.regmap_render import REGISTERS_INTRO, to_c, to_markdown, to_python

    if top == "all" and fmt != "md":
        raise click.BadParameter(f"--top all needs --format md (a {fmt} file holds one top)",
                                 param_hint="--top")
    cfg = load_config(config_path, sets)
    if fmt == "md":
        maps = [make_map(cfg, t) for t in (("core", "npu") if top == "all" else (top,))]
        text = to_markdown(maps, title="Registers of the bus-wrapped NPU", intro=REGISTERS_INTRO)
    else:
        text = (to_c if fmt == "c" else to_python)(make_map(cfg, top))
    if out_path is None:
        click.echo(text, nl=False)
    else:
        atomic_write(out_path, text)
        click.echo(f"wrote {out_path} ({fmt}, {top})", err=True)


@main.command()
@config_options
@click.option("--target", type=click.Choice(list(TARGETS)), default="ulx3s-85f",
              show_default=True, help="Board (device flow to a bitstream) or a technology-independent count.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              callback=_out_dir, help="Folder for logs and results (default: a cache folder).")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="nextpnr placement seed.")
@click.option("--seeds", "seeds_text", metavar="LIST",
              help="Seed sweep, e.g. 1-4 or 1,3,8: yosys once, place and route per seed, "
                   "the best Fmax kept (every seed's Fmax in seed_fmax).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Seed sweep: place-and-route runs at once (default: one per CPU).")
@click.option("--pack-only", is_flag=True, help="Stop nextpnr after packing: resources and fit, no Fmax.")
@click.option("--placer", type=click.Choice(PLACERS), default="auto", show_default=True,
              help="nextpnr's placer; auto is static on ECP5 (it spreads large, dense designs "
                   "better: docs/synthesis.md) and HeAP on iCE40.")
@click.option("--router", type=click.Choice(ROUTERS), default="auto",
              show_default=True,
              help="nextpnr's router; auto is router2 with timing-driven rip-up on ECP5 and "
                   "router1 on iCE40. router1 is slower but routes dense designs whose router2 "
                   "overuse levels off (the 16 x 8: docs/synthesis.md).")
@click.option("--floorplan", type=click.Choice(FLOORPLANS), default="auto", show_default=True,
              help="auto: each operand memory's block RAMs side by side in one row (ECP5); "
                   "none: nextpnr places them.")
@click.option("--congestion", is_flag=True,
              help="Keep router2's overuse by design unit and signal family (congestion.json, "
                   "the result's congestion): which part of the design does not route. ECP5.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def synth(config_path, sets, target, out_dir, seed, seeds_text, jobs, pack_only, placer, router,
          floorplan, congestion, as_json):
    """Synthesise the NPU (yosys, nextpnr): LUTs, FFs, DSPs, BRAMs, Fmax, fit."""
    from fluidnpu.synth import SynthError, synthesize
    from fluidnpu.synth.flow import parse_seeds

    if TARGETS[target].is_board:
        need_extra("synth", f"fluidnpu synth --target {target}")

    cfg = load_config(config_path, sets)
    seeds = None
    if seeds_text is not None:
        if click.get_current_context().get_parameter_source("seed").name != "DEFAULT":
            raise click.UsageError("give --seed or --seeds, not both")
        try:
            seeds = parse_seeds(seeds_text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--seeds") from None

    def progress(stage, message):
        if not as_json:
            click.echo(f"[{stage}] {message}", err=True)
    try:
        r = synthesize(cfg, target, out_dir, seed=seed, seeds=seeds, jobs=jobs,
                       pack_only=pack_only, progress=progress, placer=placer, router=router,
                       floorplan=floorplan, congestion=congestion)
    except SynthError as e:
        fail(e)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(r.to_json() if as_json else r.summary())


def _parse_policy(ctx, param, value):
    if value in ("auto", "rbatch", "stack"):
        return value
    if value.startswith("fixed:"):
        try:
            br, bp, k = (int(v) for v in value[6:].split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected fixed:BR,BP,K with three integers") from None
        return (br, bp, k)
    raise click.BadParameter(f"{value!r}: expected auto, rbatch, stack or fixed:BR,BP,K")


@main.command()
@config_options
@click.option("--model", "model_ref", help="Zoo model name or model TOML file.")
@click.option("--topology", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SCALE-Sim topology CSV (a network without exits).")
@click.option("--batch", type=click.IntRange(min=1, max=255), default=1, show_default=True)
@click.option("--policy", callback=_parse_policy, default="auto", show_default=True,
              help="auto (fluid hardware: best <B_R,B_P,k>), rbatch (B_P=k=1), stack (B_P=1), fixed:BR,BP,K.")
@click.option("--b-max", type=click.IntRange(min=1, max=255), default=16, show_default=True,
              help="Largest batch of the tables written by --table-out.")
@click.option("--table-out", type=click.Path(file_okay=False, path_type=Path), callback=_out_dir,
              help="Write the FBE table (binary, CSV) and the latency table (JSON, CSV) here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perf(config_path, sets, model_ref, topology, batch, policy, b_max, table_out, as_json):
    """Per-layer policy, cycles, utilisation and roofline efficiency from the cycle model."""
    from fluidnpu.sched.mapper import MapperError, map_model
    from fluidnpu.sim.workloads import EEModel
    from fluidnpu.sim.workloads.errors import WorkloadError
    from fluidnpu.sim.workloads import resolve_model
    from fluidnpu.sim.workloads.topology import parse_topology

    cfg = load_config(config_path, sets)
    if (model_ref is None) == (topology is None):
        raise click.UsageError("give exactly one of --model NAME|FILE and --topology FILE")
    try:
        if topology is not None:
            model = EEModel(name=topology.stem, layers=tuple(parse_topology(topology)), exits=(),
                            exit_probs=(1.0,))
        else:
            model = resolve_model(model_ref)
    except (WorkloadError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    hardware = "fluid" if policy == "auto" or isinstance(policy, tuple) else policy
    fixed = policy if isinstance(policy, tuple) else None
    try:
        plan = map_model(cfg, model, hardware, b_max=max(batch, b_max if table_out else batch),
                         fixed=fixed)
    except MapperError as e:
        raise click.UsageError(str(e)) from None
    layers = plan.layers[batch - 1]
    heads = plan.heads[batch - 1]
    paths = plan.exit_path_cycles(batch)
    splits = _row_splits(cfg, model, layers, heads)
    total = sum(p.total_cycles for p in layers) + sum(p.total_cycles for h in heads for p in h)
    out = {
        "model": model.name, "batch": batch, "hardware": hardware, "config": cfg.to_dict(),
        "layers": [p.to_dict() for p in layers],
        "heads": [[p.to_dict() for p in h] for h in heads],
        "exit_paths": [{"exit": i, "after_layer": model.exit_layer(i), "cycles": c,
                        "seconds": c * cfg.ns_per_cycle() * 1e-9} for i, c in enumerate(paths)],
        "total_cycles": total,
        "utilisation": sum(p.macs for p in layers) / (sum(p.total_cycles for p in layers) * cfg.lanes),
        "split_layers": splits,
    }
    if table_out is not None:
        out["tables"] = [str(p) for p in plan.write_tables(table_out)]
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{model.name}, batch {batch}, {hardware} hardware")
    for col in ("layer", "<B_R,B_P,k>", "cycles", "utilisation", "roofline eff.",
                "tiled roofline", "tiled bound"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    for p in layers + [p for h in heads for p in h]:
        t.add_row(p.name, ",".join(map(str, p.policy)), f"{p.total_cycles:,}", f"{p.utilisation:.3f}",
                  f"{p.roofline_efficiency:.3f}", f"{p.roofline_cycles_tiled:,}", p.bound_tiled)
    Console().print(t)
    for e in out["exit_paths"]:
        click.echo(f"exit {e['exit']} (after layer {e['after_layer']}): {e['cycles']:,} cycles "
                   f"= {e['seconds'] * 1e3:.3f} ms")
    click.echo(f"total {total:,} cycles, backbone utilisation {out['utilisation']:.3f}")
    for s in splits:
        click.echo(f"layer {s['layer']}: {s['rows']:,} rows per batch group (B_R = {s['b_r']}) exceed the "
                   f"{s['rows_per_descriptor']:,} rows a descriptor holds (dim_width = {cfg.dim_width}): split "
                   f"into {s['descriptors']} descriptors")
    for f in out.get("tables", []):
        click.echo(f"wrote {f}")


def _row_splits(cfg: HwConfig, model, layers, heads) -> list[dict]:
    """Layers whose rows at their chosen B_R do not fit one descriptor (the hardware runs
    them as several commands; the cycle counts include that)."""
    from fluidnpu.sched.mapper import descriptor_splits, rows_per_descriptor
    specs = list(model.layers) + [L for e in model.exits for L in e.layers]
    out = []
    for L, p in zip(specs, layers + [p for h in heads for p in h]):
        rows = p.policy[0] * L.r
        n = descriptor_splits(cfg, rows)
        if n > 1:
            out.append({"layer": p.name, "b_r": p.policy[0], "rows": rows, "descriptors": n,
                        "rows_per_descriptor": rows_per_descriptor(cfg)})
    return out


@main.command()
@config_options
@click.option("--batches", default="1,2,4,8,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--models", default=None, help="Comma-separated zoo names (default: the whole zoo).")
def ablation(config_path, sets, batches, models):
    """Backbone utilisation of zoo models with rbatch, stack and fluid hardware (markdown)."""
    from fluidnpu.sched.mapper import HARDWARE, ablation as run_ablation
    from fluidnpu.sim.workloads import zoo

    cfg = load_config(config_path, sets)
    try:
        bs = [int(b) for b in batches.split(",")]
    except ValueError:
        raise click.BadParameter(f"{batches!r}: expected comma-separated integers", param_hint="--batches")
    if any(b < 1 for b in bs):
        raise click.BadParameter(f"{batches!r}: batch sizes must be at least 1", param_hint="--batches")
    names = models.split(",") if models else zoo.names()
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not in the zoo ({', '.join(zoo.names())})",
                                 param_hint="--models")
    click.echo("| model | hardware | " + " | ".join(f"b={b}" for b in bs) + " |")
    click.echo("|---|---|" + "---|" * len(bs))
    for n in names:
        res = run_ablation(cfg, zoo.load(n), bs)
        for hw in HARDWARE:
            click.echo(f"| {n} | {hw} | " + " | ".join(f"{u:.3f}" for u in res[hw]) + " |")


# -- config -----------------------------------------------------------------------------

@main.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {\"hw\": fields, \"derived\": values}.")
def config(config_path, sets, as_json):
    """Validate a hardware configuration and print it."""
    cfg = load_config(config_path, sets)
    if as_json:
        click.echo(json.dumps({"hw": cfg.to_dict(), "derived": _derived(cfg)}, indent=2))
    else:
        _print_config(cfg, "hardware configuration")


# -- gemm -------------------------------------------------------------------------------

def _bad(option: str, message: str) -> click.BadParameter:
    return click.BadParameter(message, ctx=click.get_current_context(), param_hint=f"'{option}'")


def _load_int_array(option: str, path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(option, f"{path}: not a readable .npy file ({e})") from None
    if not isinstance(a, np.ndarray):
        raise _bad(option, f"{path}: holds several arrays (.npz); give one .npy array")
    if a.dtype.kind not in "iu":
        raise _bad(option, f"{path}: dtype {a.dtype}; must be an integer array")
    return a


def _check_range(option: str, path: Path, a: np.ndarray, lo: int, hi: int, what: str) -> None:
    for pick in (np.argmin, np.argmax):
        idx = np.unravel_index(pick(a), a.shape)
        v = int(a[idx])
        if not lo <= v <= hi:
            where = ", ".join(map(str, idx))
            raise _bad(option, f"{path}: element [{where}] = {v} is outside {what} [{lo}, {hi}]")


def _parse_requant(ctx, param, value):
    if value is None:
        return None
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0], 0), int(parts[1], 0)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected MULT,SHIFT as two integers, e.g. 8000,24") from None


def _validate_gemm(cfg, x_path, w_path, b_path, requant, k, bp):
    """Load and check every gemm input against ``cfg``; raise BadParameter naming the option."""
    x = _load_int_array("--x", x_path)
    w = _load_int_array("--w", w_path)
    if x.ndim != 2:
        raise _bad("--x", f"{x_path}: shape {x.shape}; X must be 2-D (R, P)")
    if w.ndim != 2:
        raise _bad("--w", f"{w_path}: shape {w.shape}; W must be 2-D (P, C)")
    (r, p), c = x.shape, w.shape[1]
    if w.shape[0] != p:
        raise _bad("--w", f"{w_path}: shape {w.shape}; its P = {w.shape[0]} does not match "
                          f"P = {p} of X {x.shape}")
    limit = 1 << cfg.dim_width
    for option, name, v in (("--x", "R", r), ("--x", "P", p), ("--w", "C", c)):
        if not 1 <= v < limit:
            raise _bad(option, f"{name} = {v}; must be from 1 to {limit - 1} "
                               f"(dim_width = {cfg.dim_width})")
    what = f"the {cfg.data_width}-bit operand range"
    _check_range("--x", x_path, x, cfg.data_min, cfg.data_max, what)
    _check_range("--w", w_path, w, cfg.data_min, cfg.data_max, what)
    bias = None
    if b_path is not None:
        bias = _load_int_array("--bias", b_path)
        if bias.shape != (c,):
            raise _bad("--bias", f"{b_path}: shape {bias.shape}; bias must be 1-D of length C = {c}")
        _check_range("--bias", b_path, bias, -(1 << 31), (1 << 31) - 1, "the int32 range")
    if requant is not None:
        mult, shift = requant
        lo, hi = -(1 << (cfg.mult_width - 1)), (1 << (cfg.mult_width - 1)) - 1
        if not lo <= mult <= hi:
            raise _bad("--requant", f"MULT = {mult}; must be from {lo} to {hi} "
                                    f"(signed mult_width = {cfg.mult_width} bits)")
        if not 0 <= shift <= 63:
            raise _bad("--requant", f"SHIFT = {shift}; must be from 0 to 63")
    if k not in cfg.k_choices:
        raise _bad("--stack", f"K = {k}; must be one of {', '.join(map(str, cfg.k_choices))} "
                              f"(powers of two up to tc = {cfg.tc})")
    if bp not in cfg.bp_choices:
        raise _bad("--split", f"BP = {bp}; must be one of {', '.join(map(str, cfg.bp_choices))} "
                              f"(powers of two up to tp = {cfg.tp})")
    return x.astype(np.int64), w.astype(np.int64), None if bias is None else bias.astype(np.int64)


_npy = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command()
@click.option("--x", "x_path", required=True, type=_npy, help="X[R x P], integer .npy.")
@click.option("--w", "w_path", required=True, type=_npy, help="W[P x C], integer .npy.")
@click.option("--bias", "b_path", type=_npy, help="bias[C], int32-range .npy.")
@click.option("--requant", callback=_parse_requant, metavar="MULT,SHIFT",
              help="Requantise: clamp(round(y*MULT / 2**SHIFT)) to the data range.")
@click.option("--relu", is_flag=True, help="Apply ReLU to the output.")
@click.option("--stack", "k", type=int, default=1, show_default=True,
              help="Stacking factor k (PEs joined into one unit).")
@click.option("--split", "bp", type=int, default=1, show_default=True,
              help="B_P: rows sharing one PE's lanes.")
@click.option("--sim", type=click.Choice(SIMULATORS), default="icarus", show_default=True)
@config_options
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), callback=_out_file,
              help="Output O[R x C] .npy (int8/int16 when requantised, else int32).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of results.")
@click.option("--wave", type=click.Path(dir_okay=False, path_type=Path), callback=_out_file,
              help="Write a waveform file.")
@click.option("--mem-latency", type=click.IntRange(min=0), help="Cycles from a memory read request to its response.")
@click.option("--mem-interval", type=click.IntRange(min=1), help="At most one memory request per N cycles.")
def gemm(x_path, w_path, b_path, requant, relu, k, bp, sim, config_path, sets, out_path,
         as_json, wave, mem_latency, mem_interval):
    """Run one GEMM layer on the RTL and check it against numpy.

    Computes O[R x C] = X[R x P] * W[P x C] (+ bias, requantisation, ReLU) in an HDL
    simulator with the run-time policy (B_P = --split, k = --stack).
    """
    cfg = load_config(config_path, sets)
    x, w, bias = _validate_gemm(cfg, x_path, w_path, b_path, requant, k, bp)

    from fluidnpu.hw.interface import OUT_RAW, OUT_REQUANT
    from fluidnpu.hw.reference import gemm_reference
    from fluidnpu.hw.gemm_runner import run_gemm
    from fluidnpu.hw.runner import MemTiming, SimError

    mult, shift = requant if requant is not None else (1, 0)
    out_mode = OUT_REQUANT if requant is not None else OUT_RAW
    timing = {name: v for name, v in (("latency", mem_latency), ("interval", mem_interval))
              if v is not None}
    try:
        res = run_gemm(cfg, x, w, bias, out_mode=out_mode, mult=mult, shift=shift, relu=relu,
                       bp=bp, k=k, sim=sim, wave=wave, mem=MemTiming(**timing))
    except SimError as e:
        fail(e)
    ref = gemm_reference(cfg, x, w, bias, out_mode=out_mode, mult=mult, shift=shift, relu=relu)
    ok, detail = _compare(res.out, ref)
    out = np.asarray(res.out).astype(_out_dtype(cfg, requant is not None))
    atomic_write(out_path, lambda f: np.save(f, out))

    (r, p), c = x.shape, w.shape[1]
    m = gemm_metrics(cfg, r, p, c, res.cycles, bias=bias is not None, requant=requant is not None,
                     bp=bp, k=k)
    extra = {"out": str(out_path)}
    if wave is not None:
        extra["wave"] = str(res.wave)
    if as_json:
        click.echo(json.dumps({"cycles": res.cycles, **m, "sim": res.sim, "shape": [r, p, c],
                               "policy": {"bp": bp, "k": k}, "check": ok, **extra}))
    else:
        click.echo(f"GEMM R={r} P={p} C={c}, policy B_P={bp} k={k}, {res.sim}")
        click.echo(f"cycles {res.cycles}, utilisation {m['utilisation']:.1%}, roofline "
                   f"{m['roofline_cycles']} cycles (efficiency {m['roofline_efficiency']:.1%}), "
                   f"tiled roofline {m['roofline_cycles_tiled']} cycles ({m['bound_tiled']} bound)")
        click.echo(f"check: {'PASS' if ok else 'FAIL'} {detail}")
        click.echo("wrote " + ", ".join(extra.values()))
    if not ok:
        if as_json:
            click.echo(f"error: {detail}", err=True)
        click.get_current_context().exit(1)


# -- demo -------------------------------------------------------------------------------

@main.command()
# Verilator by default: on the default 8 x 8 Icarus takes minutes for the demo GEMM (about 8
# on the 2-core machine, 5 Dec 2026), Verilator a few seconds after its build
@click.option("--sim", type=click.Choice(SIMULATORS), default="verilator", show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
              show_default=True, callback=_out_dir, help="Where npu.v is written.")
@click.option("--seed", type=int, default=2022, show_default=True, help="Random seed of the GEMM.")
def demo(sim, out_dir, seed):
    """Generate the default NPU and run a random GEMM on it.

    The int8 GEMM (R, P, C) = (37, 300, 23) with bias and requantisation must match the
    numpy reference bit for bit; exit status 1 if it does not.
    """
    from fluidnpu.hw.interface import OUT_REQUANT
    from fluidnpu.hw.reference import gemm_reference
    from fluidnpu.hw.gemm_runner import run_gemm
    from fluidnpu.hw.runner import MemTiming, SimError

    cfg = HwConfig()
    path = out_dir / "npu.v"
    size = _write_hdl(cfg, path, rtlil=False)
    click.echo(f"generated {path} ({size:,} bytes): {cfg.tc} PEs x {cfg.tp} lanes, "
               f"{cfg.data_width}-bit data, {cfg.acc_width}-bit accumulators")

    r, p, c = DEMO_SHAPE
    rng = np.random.default_rng(seed)
    x = rng.integers(cfg.data_min, cfg.data_max + 1, size=(r, p), dtype=np.int64)
    w = rng.integers(cfg.data_min, cfg.data_max + 1, size=(p, c), dtype=np.int64)
    bias = rng.integers(-(1 << 16), 1 << 16, size=c, dtype=np.int64)
    # y has a standard deviation near 1e5; y * 8000 / 2**24 brings it to about 45,
    # so most outputs land inside int8 and a few saturate.
    mult, shift = 8000, 24
    click.echo(f"GEMM R={r} P={p} C={c} with bias, requant ({mult}, {shift}) on {sim} ...")
    try:
        res = run_gemm(cfg, x, w, bias, out_mode=OUT_REQUANT, mult=mult, shift=shift,
                       relu=False, bp=1, k=1, sim=sim, wave=None, mem=MemTiming())
    except SimError as e:
        fail(e)
    ref = gemm_reference(cfg, x, w, bias, out_mode=OUT_REQUANT, mult=mult, shift=shift)
    ok, detail = _compare(res.out, ref)
    m = gemm_metrics(cfg, r, p, c, res.cycles, bias=True, requant=True)
    click.echo(f"{'PASS' if ok else 'FAIL'} {detail}")
    click.echo(f"cycles {res.cycles}, utilisation {m['utilisation']:.1%}, "
               f"roofline efficiency {m['roofline_efficiency']:.1%} "
               f"(roofline {m['roofline_cycles']} cycles)")
    if not ok:
        click.get_current_context().exit(1)

# The commands of the other modules (each imports only fluidnpu.cli_common, never this
# module, so any of them can be imported first).
from fluidnpu.cli_board import board  # noqa: E402
from fluidnpu.cli_cosim import cosim  # noqa: E402
from fluidnpu.cli_digits import train_digits_cmd  # noqa: E402
from fluidnpu.cli_network import network_cmd  # noqa: E402
from fluidnpu.cli_serving import compare, serve  # noqa: E402
from fluidnpu.cli_sweep import sweep  # noqa: E402

for _cmd in (sweep, train_digits_cmd, serve, compare, network_cmd, cosim, board):
    main.add_command(_cmd)
