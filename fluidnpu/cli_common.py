"""What the ``fluidnpu`` command modules share: hardware-config options, file writing
(:func:`fluidnpu.outputs.atomic_write`),
JSON and console helpers, and the check for an optional extra.

Every command module (cli.py, cli_serving.py, cli_cosim.py, ...) imports from here and
never from another command module, so any of them can be imported first; cli.py
gathers the commands into the ``fluidnpu`` group.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import click

from fluidnpu.hw.config import HwConfig, load_hw_config
from fluidnpu.outputs import atomic_write  # the one atomic writer (docs/reliability.md), re-exported

__all__ = ["config_options", "load_config", "atomic_write", "fail", "jsonable", "stderr_console", "null",
           "EXTRAS", "MissingExtra", "need_extra", "print_engines"]


def config_options(f):
    """``--config FILE`` and ``--set NAME=VALUE`` (repeatable) on a command."""
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                     help="Override one hardware parameter (repeatable).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Hardware config TOML (fields at top level or under [hw]).")(f)
    return f


def load_config(config_path: Path | None, sets: tuple[str, ...]) -> HwConfig:
    return load_hw_config(config_path).with_overrides(list(sets))


def fail(e: Exception) -> None:
    """Report a simulation failure as ``error: ...`` and exit with status 1."""
    click.echo(f"error: {e}", err=True)
    click.get_current_context().exit(1)


def jsonable(x):
    """``x`` with tuples as lists, numpy scalars as Python numbers and NaN/inf as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return jsonable(x.item())
    return x


def stderr_console():
    from rich.console import Console
    return Console(stderr=True)


class null:
    """A context manager that does nothing (in place of a progress display)."""

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# -- optional extras -----------------------------------------------------------------------

#: pip extras of the fluidnpu package (pyproject.toml): what each adds, and the Python
#: module that shows it is installed. ``pip install fluidnpu`` alone generates, simulates,
#: serves and compares.
EXTRAS = {
    "synth": ("amaranth_boards", "amaranth-boards and the nextpnr wheels"),
    "sweep": ("distributed", "Dask (dask[distributed])"),
    "board": ("litex_boards", "LiteX, LiteX-Boards, LiteDRAM, Migen and pyserial"),
    "digits": ("sklearn", "scikit-learn"),
}


class MissingExtra(click.ClickException):
    """A command needs an optional extra that is not installed: ``error: ...``, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def need_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` (naming ``what`` and the pip command) unless the
    ``extra``'s module imports. Called inside a command, before any work."""
    module, adds = EXTRAS[extra]
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {adds}, not installed here: install fluidnpu[{extra}] "
                           f"(pip install 'fluidnpu[{extra}]')") from None


def print_engines(title: str, engines) -> None:
    """The serving metrics of each ``(name, record)`` engine as one table (cosim, board run)."""
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for col in ("engine", "served", "mean us", "p99 us", "SLO", "util", "batch", "preempt", "merge"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for name, rec in engines:
        s = rec.result.summary()
        t.add_row(name, f"{s['served']}", f"{s['mean_ms'] * 1e3:.2f}", f"{s['p99_ms'] * 1e3:.2f}",
                  f"{s['slo_attainment']:.3f}", f"{s['utilisation']:.3f}", f"{s['mean_batch_size']:.2f}",
                  str(s["preemptions"]), str(s["merges"]))
    Console().print(t)
