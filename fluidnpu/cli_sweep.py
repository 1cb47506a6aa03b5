"""``fluidnpu sweep``: design-space sweeps (synthesis, cycle model, serving) on a local pool or Dask.

Added to the ``fluidnpu`` click group by :mod:`fluidnpu.cli`. The work is in
:mod:`fluidnpu.synth.sweep`; see docs/sweeps.md.
"""
from __future__ import annotations

from pathlib import Path

import click

from fluidnpu.cli_common import need_extra
from fluidnpu.outputs import out_dir as _out_dir, path_problem

__all__ = ["sweep"]


def _dask_address(ctx, param, value):
    """``--dask``: a scheduler address, checked before the sweep file is read."""
    from fluidnpu.synth.sweep import dask_address_problem
    if value is not None and dask_address_problem(value):
        raise click.BadParameter(dask_address_problem(value), ctx=ctx, param=param)
    return value


@click.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: the CPU count; 1 runs in this process).")
@click.option("--dask", "dask_address", metavar="ADDRESS", callback=_dask_address,
              help="Run on an existing Dask distributed cluster, e.g. tcp://host:8786.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, callback=_out_dir,
              help="Results folder (default: out/sweeps/<name>). A rerun into it skips finished points.")
@click.option("--list", "list_only", is_flag=True, help="Validate the file, list the points and stop.")
@click.option("--no-plots", is_flag=True, help="Do not draw the Pareto plots.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-task lines.")
def sweep(sweep_file, workers, dask_address, out_dir, list_only, no_plots, quiet):
    """Run the sweep in SWEEP_FILE (TOML): table results.csv, Pareto plots, resumable."""
    from fluidnpu.synth.sweep import SweepError, load_sweep, run_sweep
    from fluidnpu.synth.targets import TARGETS

    try:
        sw = load_sweep(sweep_file)
    except SweepError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    if list_only:
        cols = ["label", *[k for k in sw.varying if k != "label"]]
        click.echo(f"{sw.name}: {len(sw.points)} points, {len(sw.synth_jobs)} synthesis runs"
                   + (f" ({sw.synth['target']}{', pack only' if sw.synth['pack_only'] else ''})" if sw.synth else ""))
        for p in sw.points:
            click.echo(f"  {p.index:4d} {p.id}  " + "  ".join(f"{k}={p.params.get(k)}" for k in cols))
        return
    if workers is not None and dask_address is not None:
        click.echo("error: --workers and --dask: give one (the Dask cluster has its own workers)", err=True)
        raise SystemExit(2)
    if dask_address is not None:
        need_extra("sweep", "fluidnpu sweep --dask")
    if sw.synth and TARGETS[sw.synth["target"]].is_board:
        need_extra("synth", f"{sweep_file}: synthesis for target {sw.synth['target']}")
    out = out_dir or Path("out") / "sweeps" / sw.name
    if out_dir is None and path_problem(out, "dir"):
        click.echo(f"error: the default results folder: {path_problem(out, 'dir')}; give --out", err=True)
        raise SystemExit(2)

    def log(msg):
        if not quiet:
            click.echo(msg, err=True)
    try:
        res = run_sweep(sw, out, workers=workers, dask=dask_address, progress=not quiet, plots=not no_plots,
                        log=log)
    except SweepError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2)
    click.echo(f"{res.done} of {res.total} points in {res.table} ({res.ran} tasks run now, {res.skipped} "
               f"already done, {len(res.failed)} failed, {res.elapsed_s:.1f} s)")
    for f in res.failed:
        click.echo(f"failed: {f.get('kind')} {f.get('label') or f.get('params', {}).get('label', '')} "
                   f"{f['id']}: {f.get('error')}", err=True)
    if res.interrupted:
        raise SystemExit(130)
    if res.failed or not res.complete:
        raise SystemExit(1)
