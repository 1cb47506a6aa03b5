"""``fluidnpu cosim``: a scheduler from sched/ drives the RTL NPU with its FBE; the same
trace on the serving simulator's FBE mode; metrics of both and their agreement.

Added to the ``fluidnpu`` click group by cli.py. See docs/cosim.md.
"""
from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

import click

from fluidnpu.cli_common import jsonable, load_config, stderr_console
from fluidnpu.outputs import out_dir as _out_dir, out_file as _out_file, staged_output
from fluidnpu.sched import SCHEDULERS

__all__ = ["cosim", "parse_knobs"]


def parse_knobs(items) -> dict:
    """``name=value`` strings -> dict; values are TOML scalars (``0.02``, ``8``, ``true``) or
    ``none``."""
    out = {}
    for it in items:
        name, sep, val = it.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{it!r}: must be NAME=VALUE, e.g. max_delay_ms=0.02", param_hint="--knob")
        v = val.strip()
        if v.lower() in ("none", "null"):
            out[name] = None
            continue
        try:
            out[name] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            raise click.BadParameter(f"{it!r}: value {v!r} is not a number, boolean or none",
                                     param_hint="--knob") from None
    return out


def _setup(scenario_path, scheduler, knobs, config_path, sets, requests, seed, latency, policy, load=1.0):
    from fluidnpu.hw.config import ConfigError
    from fluidnpu.hw.runner import MemTiming
    from fluidnpu.sim.cosim.run import COSIM_CONFIG, DEFAULT_SCENARIO, prepare
    try:
        cfg = load_config(config_path, sets) if config_path else COSIM_CONFIG.with_overrides(list(sets))
    except (ConfigError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    if load != 1.0:
        from fluidnpu.sim.serving import load_scenario, scale_rates
        scenario_path = scale_rates(load_scenario(scenario_path or DEFAULT_SCENARIO), load)
    return prepare(scenario_path, (scheduler, knobs), cfg=cfg, requests=requests, seed=seed,
                   mem=MemTiming(latency=latency), policy=policy)


def _errors():
    from fluidnpu.hw.config import ConfigError
    from fluidnpu.sched import SchedulerError
    from fluidnpu.sim.cosim.host import CosimError
    from fluidnpu.sim.network import NetworkError
    from fluidnpu.sim.serving import ScenarioError
    from fluidnpu.sim.workloads.errors import WorkloadError
    return (ScenarioError, SchedulerError, CosimError, NetworkError, WorkloadError, ConfigError)


def _summary(rec) -> dict:
    res = rec.result
    return {"engine": rec.engine, "summary": res.summary(), "per_device": res.per_device(), "cycles": rec.cycles,
            "wall_s": rec.wall_s}


def _completion_csv(path: Path, s, model, rtl):
    import csv
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request", "arrival_cycle", "image", "exit", "class", "start_cycle_rtl", "finish_cycle_rtl",
                    "finish_cycle_serve", "equal"])
        for r in range(len(s.requests)):
            w.writerow([r, int(s.arrival_cycle[r]), int(s.images[r]), int(s.exits[r]), int(s.classes[r]),
                        int(rtl.start_cycle[r]), int(rtl.finish_cycle[r]), int(model.finish_cycle[r]),
                        int(rtl.finish_cycle[r] == model.finish_cycle[r])])


@click.command()
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Single-model scenario TOML (default: the shipped digits-sensors scenario).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="fluid", show_default=True)
@click.option("--knob", "knob_items", multiple=True, metavar="NAME=VALUE",
              help="A scheduler knob (repeatable), e.g. --knob max_delay_ms=0.02.")
@click.option("--sim", type=click.Choice(["icarus", "verilator"]), default="verilator", show_default=True)
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="Number of requests (the first N of the scenario's draw).")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Seed of the arrivals and of each request's test image.")
@click.option("--load", "load", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Every device's arrival rate times this (Poisson, gamma, MMPP; not traces).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Hardware config TOML [default: the digits configuration, docs/cosim.md].")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override one hardware parameter.")
@click.option("--latency", type=click.IntRange(min=1), default=20, show_default=True,
              help="Memory latency of the bench's memory model, cycles.")
@click.option("--policy", type=click.Choice(["auto", "rbatch", "whole"]), default="auto", show_default=True,
              help="Control table: the mapper's policies (fluid or rbatch hardware) or the whole batch at (1, 1).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), callback=_out_dir,
              help="Write requests.csv (RTL), requests_serve.csv (serving simulator, FBE mode), requests_tables.csv "
                   "(serving simulator, mapper tables), completion.csv and summary.json here.")
@click.option("--wave", type=click.Path(dir_okay=False, path_type=Path), callback=_out_file,
              help="Record the RTL run's waveform here (FST on Icarus, VCD on Verilator; the suffix follows the "
                   "simulator). Every signal for every cycle: keep --requests small.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cosim(scenario_path, scheduler, knob_items, sim, n_requests, seed, load, config_path, sets, latency, policy,
          out_dir, wave, as_json):
    """Co-simulate: the scheduler drives the RTL NPU (cocotb) on a scenario's trace; the
    serving simulator serves the same trace; metrics of both and their agreement (share
    of requests with the same completion cycle). Exit status 1 if they disagree."""
    from fluidnpu.hw.runner import SimError
    from fluidnpu.sim.cosim.run import DEFAULT_SCENARIO, agreement, metric_errors, run_model, run_rtl, run_tables

    t0 = time.perf_counter()
    knobs = parse_knobs(knob_items)
    try:
        s = _setup(scenario_path, scheduler, knobs, config_path, sets, n_requests, seed, latency, policy, load)
        model = run_model(s)
    except _errors() as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    n = len(s.requests)
    try:
        if as_json:
            rtl = run_rtl(s, sim, wave=wave)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("requests"),
                    TextColumn("{task.fields[cyc]}"), TimeRemainingColumn())
            with Progress(*cols, console=stderr_console(), transient=True) as bar:
                task = bar.add_task(f"RTL ({sim})", total=n, cyc="building or starting")
                rtl = run_rtl(s, sim, wave=wave,
                              progress=lambda c, d: bar.update(task, completed=d, cyc=f"cycle {c:,}"))
    except _errors() as e:
        click.echo(f"error: the co-simulation stopped: {e}", err=True)
        sys.exit(1)
    except SimError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    agr = agreement(model, rtl)
    tables = run_tables(s, "fluid")
    out = {"scenario": s.scenario.name, "scenario_file": str(scenario_path or DEFAULT_SCENARIO),
           "scheduler": scheduler, "knobs": rtl.result.knobs, "sim": sim, "seed": seed, "load": load, "requests": n,
           "config": s.cfg.key(), "memory_latency": latency, "policy": policy,
           "table": s.plans[0].table.source, "summary": rtl.result.summary(), "per_device": rtl.result.per_device(),
           "rtl": {"cycles": rtl.cycles, "wall_s": rtl.wall_s, "samples_checked": rtl.extra["logits_ok"],
                   "cycles_per_s": rtl.extra["dut_cycles"] / max(rtl.wall_s, 1e-9), "wave": rtl.extra["wave"]},
           "serve": _summary(model), "agreement": agr["agreement"], "agreement_detail": agr,
           "serve_tables": dict(_summary(tables), errors_vs_rtl=metric_errors(rtl, tables)),
           "wall_s": time.perf_counter() - t0}
    if out_dir is not None:
        with staged_output(out_dir, "cosim") as st:     # published together, cosim.manifest.json last
            rtl.result.to_csv(st.path / "requests.csv")
            model.result.to_csv(st.path / "requests_serve.csv")
            tables.result.to_csv(st.path / "requests_tables.csv")
            _completion_csv(st.path / "completion.csv", s, model, rtl)
            out["files"] = [str(st.final(f)) for f in ("requests.csv", "requests_serve.csv", "requests_tables.csv",
                                                       "completion.csv", "summary.json")]
            (st.path / "summary.json").write_text(json.dumps(jsonable(out), indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(jsonable(out), indent=1))
    else:
        _print(out, rtl, model, tables, agr)
    if agr["agreement"] < 1.0:
        click.echo(f"error: the RTL and the serving simulator disagree on {agr['mismatches']} of {n} requests "
                   f"(first: {agr['first_mismatches'][:3]})", err=True)
        sys.exit(1)


def _print(out, rtl, model, tables, agr):
    from fluidnpu.cli_common import print_engines
    print_engines(f"{out['scenario']}: {out['scheduler']}, {out['requests']} requests, seed {out['seed']}, "
                  f"RTL on {out['sim']}", (("RTL", rtl), ("FBE mode", model), ("tables", tables)))
    s = out["summary"]
    click.echo("exits per head: " + "; ".join(f"{k} {v}" for k, v in s["exits_per_head"].items()))
    click.echo(f"agreement {agr['agreement']:.4f}: {agr['requests'] - agr['mismatches']} of {agr['requests']} "
               f"completion cycles equal (max difference {agr['max_abs_diff_cycles']} cycles)")
    e = out["serve_tables"]["errors_vs_rtl"]
    click.echo(f"the default serving simulator (mapper tables, fluid hardware) on the same trace: mean latency "
               f"{100 * e['mean_ms']:+.1f} %, p99 {100 * e['p99_ms']:+.1f} %, SLO attainment "
               f"{e['slo_attainment']:+.3f} against the RTL (docs/cosim.md)")
    r = out["rtl"]
    click.echo(f"RTL: {r['cycles']:,} cycles in {r['wall_s']:.1f} s ({r['cycles_per_s']:,.0f} cycles/s), "
               f"{r['samples_checked']} results bit-exact with the numpy reference")
    for f in out.get("files", []) + ([r["wave"]] if r["wave"] else []):
        click.echo(f"wrote {f}")
