"""``fluidnpu serve`` and ``fluidnpu compare``: the serving simulator from the command line.

Added to the ``fluidnpu`` click group by cli.py.
Service times come from the policy mapper's latency tables (the cycle model) of the
default hardware configuration: baselines on ``rbatch`` hardware, ``fluid`` on
``fluid`` hardware, unless ``--hardware`` says otherwise. See docs/serving.md.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

from fluidnpu.cli_common import config_options, jsonable, load_config, null, stderr_console
from fluidnpu.outputs import out_dir as _out_dir, staged_output
from fluidnpu.sched import SCHEDULERS
from fluidnpu.sim.memory import DEFAULT_MEMORY, MEMORY_PRESETS

__all__ = ["serve", "compare"]


def _user_errors(f):
    """Report scenario, scheduler, table and model errors as ``error: ...`` with exit status 2."""
    @functools.wraps(f)
    def wrapper(*a, **kw):
        from fluidnpu.sched import SchedulerError
        from fluidnpu.sim.latency import LatencyTableError
        from fluidnpu.sim.network import NetworkError
        from fluidnpu.sim.serving import ArrivalError, ScenarioError, SimulationError, TraceError
        from fluidnpu.sim.workloads.errors import WorkloadError
        try:
            return f(*a, **kw)
        except (ScenarioError, SchedulerError, LatencyTableError, ArrivalError, TraceError, WorkloadError,
                SimulationError, NetworkError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
    return wrapper


def _requests_cap(ctx, param, value):
    """``--requests``: at most MAX_REQUESTS per run (the message gives the memory it would need)."""
    from fluidnpu.sim.serving.scenario import requests_problem
    if value is not None and requests_problem(value):
        raise click.BadParameter(requests_problem(value), ctx=ctx, param=param)
    return value


# -- serve --------------------------------------------------------------------------------

@click.command()
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Scenario TOML (default: the shipped default scenario).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="fluid", show_default=True)
@click.option("--hardware", type=click.Choice(("rbatch", "fluid", "fbe")),
              help="Hardware variant of the latency tables (default: fluid for the fluid scheduler, rbatch "
                   "otherwise); fbe: the FBE mode, cycle-exact with the RTL (single-model scenarios with "
                   "weights, default the co-simulation's scenario; docs/cosim.md).")
@click.option("--memory", type=click.Choice(tuple(MEMORY_PRESETS)), default=DEFAULT_MEMORY, show_default=True,
              help="The memory timing the cycle model gives the NPU's port: "
                   + "; ".join(f"{k}: {p.summary}" for k, p in MEMORY_PRESETS.items())
                   + " (docs/serving.md, docs/board.md).")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Seed of the arrival and exit draws (the same for every scheduler).")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), callback=_requests_cap,
              help="Number of requests (overrides the scenario's duration; at most 5,000,000).")
@click.option("--load", "load", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Every device's arrival rate times this (Poisson, gamma, MMPP; not traces).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), callback=_out_dir,
              help="Write requests.csv (one row per request) and summary.json here (published together, "
                   "with serve.manifest.json).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
@_user_errors
def serve(scenario_path, scheduler, hardware, memory, seed, n_requests, load, out_dir, as_json, config_path, sets):
    """Simulate one scheduler serving a scenario; latency, SLO attainment, utilisation."""
    from fluidnpu.sim.serving import draw_requests, generate_requests, load_scenario, run, scale_rates, slo_bases
    from fluidnpu.sim.serving.compare import DEFAULT_SCENARIO, load_with_spec, serving_tables

    t0 = time.perf_counter()
    given = config_path is not None or bool(sets)
    cfg = load_config(config_path, sets)
    hw = hardware or ("fluid" if scheduler == "fluid" else "rbatch")
    mem = MEMORY_PRESETS[memory].timing
    con = stderr_console()
    if hw == "fbe":
        from fluidnpu.sim.cosim.run import DEFAULT_SCENARIO as FBE_SCENARIO, prepare, run_model
        scenario_path = scenario_path or FBE_SCENARIO
        sc_in = scenario_path if load == 1.0 else scale_rates(load_scenario(scenario_path), load)
        s = prepare(sc_in, scheduler, requests=n_requests, seed=seed, mem=mem,
                    **({"cfg": cfg} if given else {}))
        sc, reqs = s.scenario, s.requests
        rec = run_model(s)
        res, sim_s = rec.result, rec.wall_s
        tab_src = {s.prog.model.name: s.plans[0].table.source}
    else:
        sc, _ = load_with_spec(scenario_path)
        if load != 1.0:
            sc = scale_rates(sc, load)
        with con.status("mapping the models (cycle model)...", spinner="dots") if not as_json else null():
            tabs = serving_tables(sc, cfg, mem=mem)
        ref = tabs["rbatch"]
        if n_requests is not None:
            sc, reqs = draw_requests(sc, n_requests, seed, slo_bases(sc, ref))
        else:
            _warn_dropped_rows(sc)
            reqs = generate_requests(sc, seed, slo_bases(sc, ref))
        with con.status(f"simulating {len(reqs):,} requests ({scheduler} on {hw})...", spinner="dots") \
                if not as_json else null():
            t1 = time.perf_counter()
            res = run(sc, scheduler, tabs[hw], seed, slo_reference=ref, requests=reqs)
            sim_s = time.perf_counter() - t1
        tab_src = {m: t.source for m, t in tabs[hw].items()}
    summ = res.summary()
    out = {"scenario": sc.name, "scenario_file": str(scenario_path or DEFAULT_SCENARIO), "scheduler": scheduler,
           "knobs": res.knobs, "hardware": hw, "memory": memory, "memory_timing": mem.to_dict(), "seed": seed, "load": load, "requests": len(reqs),
           "tables": tab_src, "summary": summ, "per_device": res.per_device(),
           "wall_s": time.perf_counter() - t0, "simulation_s": sim_s}
    if out_dir is not None:
        with staged_output(out_dir, "serve") as st:
            res.to_csv(st.path / "requests.csv")
            out["files"] = [str(st.final("requests.csv")), str(st.final("summary.json"))]
            (st.path / "summary.json").write_text(json.dumps(jsonable(out), indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(jsonable(out), indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{sc.name}: {scheduler} on {hw} hardware, {memory} memory, seed {seed}, {len(reqs):,} requests")
    for col in ("device", "requests", "mean ms", "p50", "p95", "p99", "SLO"):
        t.add_column(col, justify="left" if col == "device" else "right")

    def row(name, s):
        t.add_row(name, f"{s['requests']:,}", f"{s['mean_ms']:.3f}", f"{s['p50_ms']:.3f}", f"{s['p95_ms']:.3f}",
                  f"{s['p99_ms']:.3f}", f"{s['slo_attainment']:.3f}")

    for name, s in out["per_device"].items():
        row(name, s)
    t.add_section()
    row("all", summ)
    Console().print(t)
    click.echo("exits per head: " + "; ".join(f"{k} {v}" for k, v in summ["exits_per_head"].items()))
    att = "  ".join(f"{m:g}x: {v:.3f}" for m, v in summ["slo_attainment_at"].items())
    click.echo(f"SLO attainment at multiples of batch-1 latency: {att}")
    click.echo(f"throughput {summ['throughput_rps']:.1f} req/s, NPU utilisation {summ['utilisation']:.3f}, "
               f"MAC utilisation {summ['mac_utilisation'] or float('nan'):.3f}, mean batch {summ['mean_batch_size']:.2f}, "
               f"preemptions {summ['preemptions']}, merges {summ['merges']}, dropped {summ['dropped']}")
    click.echo(f"simulated {len(reqs):,} requests in {sim_s:.2f} s ({len(reqs) / max(sim_s, 1e-9):,.0f} req/s)")
    for f in out.get("files", []):
        click.echo(f"wrote {f}")


def _warn_dropped_rows(sc) -> None:
    """Say how many trace rows lie at or after duration_s (the run does not replay them)."""
    from fluidnpu.sim.serving.scenario import dropped_trace_rows
    for dev, path, late, total in dropped_trace_rows(sc):
        click.echo(f"warning: device {dev!r}: {late:,} of {total:,} rows of trace {path} are at or after "
                   f"duration_s = {sc.duration_s:g} s and are not replayed (raise duration_s to replay them)",
                   err=True)


# -- compare -------------------------------------------------------------------------------

@click.command()
@click.option("--scenario", "scenario_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Scenario TOML with an optional [compare] table (default: the shipped default scenario).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/compare"),
              show_default=True, callback=_out_dir,
              help="Directory for CSV files, plots and report.md (published together, with compare.manifest.json).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (summary, per-scheduler figures).")
@click.option("--requests", "n_requests", type=click.IntRange(min=50), callback=_requests_cap,
              help="Requests per run (overrides [compare].requests; at most 5,000,000).")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1, max=1000),
              help="Run seeds 1..N (overrides [compare].seeds; the first min(N, tune_seeds) tune the knobs).")
@click.option("--jobs", type=click.IntRange(min=1), help="Worker processes (default: up to 2).")
@config_options
@_user_errors
def compare(scenario_path, out_dir, as_json, n_requests, n_seeds, jobs, config_path, sets):
    """Every scheduler on both hardware variants over loads and arrival patterns, baselines tuned per cell;
    the system and scheduler-only comparisons; table, CSV, plots, report."""
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fluidnpu.sim.serving.compare import load_with_spec, run_compare, serving_tables
    from fluidnpu.sim.serving.report import clean_json, write_all

    cfg = load_config(config_path, sets)
    sc, spec = load_with_spec(scenario_path)
    if n_requests is not None:
        spec = replace(spec, requests=n_requests)
    else:
        from fluidnpu.sim.serving.scenario import requests_problem
        if requests_problem(spec.requests):
            raise click.BadParameter(f"[compare] requests = {requests_problem(spec.requests)}",
                                     param_hint=f"--scenario {scenario_path}")
    if n_seeds is not None:
        spec = replace(spec, seeds=tuple(range(1, n_seeds + 1)), tune_seeds=spec.tune_seeds)
    con = stderr_console()
    with con.status("mapping the models (cycle model)...", spinner="dots") if con.is_terminal else null():
        tabs = serving_tables(sc, cfg)
    live = con.is_terminal and not as_json
    prog = Progress(TextColumn("compare"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                    TimeElapsedColumn(), console=con, disable=not live)
    last = [0.0]

    def progress(done, total):
        if live:
            prog.update(task, completed=done, total=total)
        elif done == total or done / total >= last[0] + 0.25:
            last[0] = done / total
            click.echo(f"compare: {done}/{total} runs", err=True)

    with prog:
        task = prog.add_task("compare", total=None)
        res = run_compare(sc, spec, tabs, jobs=jobs, progress=progress)
    files = write_all(res, out_dir)
    if as_json:
        click.echo(json.dumps(clean_json(res.to_json()), indent=1))
        return
    _print_compare(res, files)


def _print_compare(res, files) -> None:
    """The per-cell table, the two comparisons side by side, the tail cell and the files."""
    from rich.console import Console
    from rich.table import Table

    from fluidnpu.sim.serving.report import MEANINGS, summary_rows, table_rows
    sp, s = res.spec, res.summary
    t = Table(title=f"{res.scenario}: {sp.requests:,} requests per run, {len(sp.seeds)} seeds: mean latency (ms) "
                    f"and SLO attainment (own SLOs, scored models equally weighted) on each hardware; 95% "
                    f"intervals in the report")
    for col in ("pattern", "load", "scheduler", "rbatch ms", "rbatch SLO", "fluid ms", "fluid SLO", "p99 ms",
                "best thr."):
        t.add_column(col, justify="left" if col in ("pattern", "scheduler", "best thr.") else "right")
    prev = None
    for r in table_rows(res, intervals=False):
        if prev is not None and r[:2] != prev:
            t.add_section()
        prev = r[:2]
        t.add_row(*[f"[bold red]{x}[/]" if r[2] == "fluid" and i in (3, 5) else x for i, x in enumerate(r)])
    con = Console() if sys.stdout.isatty() else Console(width=120)
    con.print(t)
    t2 = Table(title="fluid against the baselines (ratio [95% CI]; above 1 fluid is better)")
    for col in ("comparison", "figure", "vs throughput", "vs prema", "vs best"):
        t2.add_column(col, justify="left" if col in ("comparison", "figure") else "right")
    prev = None
    for r in summary_rows(res):
        if prev is not None and r[0] != prev:
            t2.add_section()
        prev = r[0]
        t2.add_row(*r)
    con.print(t2)
    tc = s["tail_cell"]
    click.echo(f"system: {MEANINGS['system']}.")
    click.echo(f"scheduler only: {MEANINGS['scheduler_only']}.")
    click.echo(f"mean latency: {MEANINGS['avg_latency_ratio']}. tail: {MEANINGS['tail_ratio']} "
               f"({tc['pattern']} at load {tc['load']:g}); p99: {MEANINGS['tail_p99_ratio']}.")
    bad = [f"{m} (best {a['best']:.3f} by {a['by']})" for m, a in res.attainable.items() if not a["attainable"]]
    if bad:
        click.echo(f"unattainable SLOs (below {sp.attainable:.0%} for every scheduler at load {sp.probe_load:g}), "
                   f"not scored: {', '.join(bad)}")
    if s["tail_unattainable"]:
        click.echo("no model's SLO is attainable: the tail figures are not scored")
    click.echo(f"paper: {s['paper']['avg_latency_ratio']}x mean latency, {s['paper']['tail_ratio']}x tail SLO "
               f"attainment, against throughput-maximising systems")
    click.echo(f"{len(res.runs)} runs in {res.elapsed_s:.1f} s")
    click.echo(f"plots: {', '.join(files['plots'])}")
    click.echo(f"report: {files['report']}; CSV: {', '.join(files['csv'])}; JSON: {files['json']}")
