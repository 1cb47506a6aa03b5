"""Design-space sweeps: hardware x models x scenarios x schedulers, on one machine or Dask.

A sweep file (TOML, see docs/sweeps.md) names axes whose cartesian product gives the
points, and what to run per point:

* ``[synth]``: the synthesis flow (:func:`fluidnpu.synth.synthesize`) once per hardware
  configuration: LUTs, FFs, DSPs, BRAMs, Fmax, fit;
* ``[perf]``: the policy mapper on the cycle model (:func:`fluidnpu.sched.mapper.map_model`)
  per point: cycles, MAC utilisation and latency of the whole network at some batch sizes;
* ``[serve]``: the serving simulator (:func:`fluidnpu.sim.serving.run`) per point: mean
  and tail latency, SLO attainment, throughput.

:func:`load_sweep` reads and validates a file (:mod:`fluidnpu.synth.sweep_file`: every
point is built and checked before anything runs; a bad value is named with its field and
what is allowed); :func:`run_sweep` (here) runs what is not done yet on a local process pool or an existing Dask
cluster and appends one JSON line per finished task to ``results.jsonl`` (flushed and
fsynced), so a sweep that crashed or was stopped resumes where it was. The table
(``results.csv``, and ``results.parquet`` with pyarrow) and the Pareto plots are
rebuilt from that file (:mod:`fluidnpu.synth.sweep_out`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fluidnpu.outputs import atomic_write

from .sweep_file import AXES, Point, Sweep, SweepError, load_sweep, sweep_from_dict
from .sweep_tasks import evaluate_point, evaluate_synth

__all__ = ["SweepError", "Sweep", "Point", "load_sweep", "sweep_from_dict", "run_sweep", "SweepRun",
           "evaluate_synth", "evaluate_point", "AXES"]


# -- running ---------------------------------------------------------------------------

class _Inline:
    """Runs each task when submitted (``--workers 1``): no pool, the same bookkeeping."""

    def submit(self, fn, *args):
        from concurrent.futures import Future
        f = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            f.set_exception(e)
        return f

    def wait(self, futures):
        return set(futures), set()

    def close(self, cancel=False, futures=()):
        pass

    capacity = 1


def _worker_init(parent: int) -> None:
    """A pool worker's set-up: its own process group (Ctrl-C at the terminal reaches only
    the main process, which stops the workers), and a watchdog that ends the worker and
    the tools it started (yosys, nextpnr: the same group) when the main process is gone,
    even by SIGKILL, instead of leaving them blocked on the pool's pipe."""
    import signal
    import threading
    try:
        os.setpgid(0, 0)
        own_group = True
    except OSError:
        own_group = False

    def watch():
        while os.getppid() == parent:
            time.sleep(WATCHDOG_S)
        if own_group:
            os.killpg(0, signal.SIGKILL)    # this worker and the tools it started
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="fluidnpu-parent-watchdog", daemon=True).start()


#: how often a pool worker checks that the sweep's main process is alive, seconds
WATCHDOG_S = 0.5


class _Pool:
    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                      initializer=_worker_init, initargs=(os.getpid(),))
        self.capacity = 2 * workers

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def wait(self, futures):
        from concurrent.futures import FIRST_COMPLETED, wait
        done, rest = wait(futures, return_when=FIRST_COMPLETED)
        return done, rest

    def close(self, cancel=False, futures=()):
        if cancel:
            # stop what runs now too: the workers and the tools they started (yosys, nextpnr)
            workers = list(getattr(self.ex, "_processes", {}) or {})
            _terminate_groups(workers)
            _terminate_tree(workers)
        try:
            self.ex.shutdown(wait=not cancel, cancel_futures=cancel)
        except Exception:  # noqa: BLE001 - a broken pool on the way out
            pass


def _terminate_tree(pids, grace_s: float = 3.0) -> None:
    """Terminate the processes ``pids`` (the pool's workers) and their children (after Ctrl-C)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency of fluidnpu
        return
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += p.children(recursive=True) + [p]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _terminate_groups(pids) -> None:
    """SIGTERM to each worker's process group (the worker and the tools it started)."""
    import signal
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass


class _Dask:
    def __init__(self, address):
        try:
            from distributed import Client
        except ImportError:
            raise SweepError("--dask: the 'distributed' package is not installed: install "
                             "fluidnpu[sweep] (pip install 'fluidnpu[sweep]')") from None
        if isinstance(address, Client):
            self.client, self.own = address, False
        else:
            problem = dask_address_problem(address)
            if problem:
                raise SweepError(f"--dask {problem}")
            try:
                self.client, self.own = Client(address, timeout=30), True
            except (OSError, TimeoutError, ValueError) as e:
                raise SweepError(f"--dask {address}: cannot connect to a Dask scheduler ({e})") from None
        threads = sum(self.client.nthreads().values()) or 1
        self.capacity = 2 * threads
        self.workers = threads

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures):
        from distributed import wait
        res = wait(list(futures), return_when="FIRST_COMPLETED")
        return set(res.done), set(res.not_done)

    def close(self, cancel=False, futures=()):
        if cancel and futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if self.own:
            self.client.close()


#: address schemes of Dask's comm backends
DASK_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")


def dask_address_problem(address: str) -> str | None:
    """Why ``address`` is not a Dask scheduler address (``[SCHEME://]HOST:PORT``); None if it is one."""
    import re
    m = re.fullmatch(r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>\d+)",
                     address.strip())
    if m is None or (m["scheme"] or "tcp") not in DASK_SCHEMES or not 0 < int(m["port"]) < 65536:
        return (f"{address}: not a Dask scheduler address; expected SCHEME://HOST:PORT with a scheme from "
                f"{', '.join(DASK_SCHEMES)} and a port from 1 to 65535, e.g. tcp://10.0.0.5:8786")
    return None


@dataclass
class SweepRun:
    """What :func:`run_sweep` did."""
    out_dir: Path
    total: int                  #: points in the sweep
    done: int                   #: points with a finished record (now)
    skipped: int                #: tasks already done before this run
    ran: int                    #: tasks run now
    failed: list[dict]          #: records of tasks that failed now
    interrupted: bool
    table: Path | None
    plots: list[Path]
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.done == self.total and not self.failed


def run_sweep(sweep: Sweep, out_dir: str | Path, *, workers: int | None = None, dask=None,
              progress: bool = True, plots: bool = True,
              log: Callable[[str], None] | None = None) -> SweepRun:
    """Run the tasks of ``sweep`` not yet recorded in ``out_dir/results.jsonl``.

    ``workers``: local processes (default: CPU count; 1 runs in this process); ``dask``:
    a scheduler address (``tcp://host:port``) or a ``distributed.Client``. Finished tasks
    are appended to ``results.jsonl`` one line each (flushed and fsynced); the table and
    plots are rebuilt at the end, also after Ctrl-C (which stops the sweep: rerun to go on).
    """
    from .sweep_out import ResultStore, write_outputs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    store = ResultStore(out / "results.jsonl")
    done_ids = store.done_ids()
    atomic_write(out / "sweep.json", json.dumps({"name": sweep.name, "file": str(sweep.path) if sweep.path else None,
                                                 "points": len(sweep.points), "synth": sweep.synth,
                                                 "perf": sweep.perf, "serve": sweep.serve}, indent=2) + "\n")
    # each configuration's synthesis, then its points: rows appear as soon as they can
    todo: list[tuple[str, dict]] = []
    by_synth: dict = {}
    for p in sweep.points:
        by_synth.setdefault(p.synth_id, []).append(p)
    for sid, job in sweep.synth_jobs.items():
        if sid not in done_ids:
            todo.append(("synth", job))
        todo += [("point", p.job) for p in by_synth.get(sid, []) if p.id not in done_ids]
    todo += [("point", p.job) for p in by_synth.get(None, []) if p.id not in done_ids]
    skipped = sweep.n_tasks - len(todo)
    if workers is None:
        workers = os.cpu_count() or 1
    if dask is not None:
        runner = _Dask(dask)
        where = f"Dask cluster {getattr(runner.client, 'scheduler', None) and runner.client.scheduler.address} " \
                f"({runner.workers} threads)"
    elif workers <= 1 or len(todo) <= 1:
        runner, where = _Inline(), "this process"
    else:
        runner, where = _Pool(workers), f"{workers} local processes"
    say(f"sweep {sweep.name}: {len(sweep.points)} points, {len(sweep.synth_jobs)} synthesis runs; "
        f"{skipped} of {sweep.n_tasks} tasks already done; running {len(todo)} on {where}; results in {out}")
    max_synth = (sweep.synth or {}).get("max_parallel", 1)
    failed: list[dict] = []
    ran = 0
    interrupted = False
    t0 = time.time()
    bar = _Bar(len(todo), sweep.name, progress, say)
    inflight: dict = {}
    queue = list(todo)
    out_root = str(out.resolve())
    old_term = _on_sigterm_interrupt()
    try:
        with bar:
            while queue or inflight:
                n_synth = sum(1 for k, _ in inflight.values() if k == "synth")
                while queue and len(inflight) < runner.capacity:
                    i = 0
                    if queue[0][0] == "synth" and n_synth >= max_synth:
                        i = next((j for j, (k, _) in enumerate(queue) if k != "synth"), None)
                        if i is None:
                            break
                    kind, job = queue.pop(i)
                    fut = (runner.submit(evaluate_synth, job, out_root) if kind == "synth"
                           else runner.submit(evaluate_point, job))
                    inflight[fut] = (kind, job)
                    n_synth += kind == "synth"
                done, _ = runner.wait(list(inflight))
                for fut in done:
                    kind, job = inflight.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as e:  # noqa: BLE001 - the worker died, the pool broke, ...
                        rec = {"kind": kind, "id": job["id"], "ok": False, "error": f"{type(e).__name__}: {e}"}
                        if kind == "point":
                            rec["params"] = job["params"]
                    ran += 1
                    if rec.get("ok"):
                        store.append(rec)
                    else:
                        failed.append(rec)
                        store.append_error(rec)
                    bar.advance(_describe(rec))
    except KeyboardInterrupt:
        interrupted = True
        runner.close(cancel=True, futures=list(inflight))
        say(f"interrupted: {ran} tasks finished in this run are saved; run the same command again to go on")
    else:
        runner.close()
    finally:
        _restore_sigterm(old_term)
    table, plot_files, n_done = write_outputs(sweep, out, plots=plots, log=say)
    return SweepRun(out_dir=out, total=len(sweep.points), done=n_done, skipped=skipped, ran=ran, failed=failed,
                    interrupted=interrupted, table=table, plots=plot_files, elapsed_s=round(time.time() - t0, 2))


def _on_sigterm_interrupt():
    """SIGTERM (a batch system's stop, ``kill``) stops the sweep as Ctrl-C does: saved, resumable."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(old) -> None:
    import signal
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _describe(rec: dict) -> str:
    if rec.get("kind") == "synth":
        what = f"synth {rec.get('label', rec['id'])}"
        m = rec.get("metrics", {})
        if rec.get("ok"):
            fm, fp = m.get("fmax_mhz"), m.get("fmax_placed_mhz")
            what += (f": LUTs {m.get('luts')}, DSPs {m.get('dsps')}, BRAMs {m.get('brams')}"
                     + (f", Fmax {fm:.1f} MHz" if fm else
                        f", not routed ({fp:.1f} MHz after placement)" if fp else "")
                     + (" (cached)" if m.get("synth_cached") else ""))
    else:
        p = rec.get("params", {})
        what = "point " + " ".join(str(p[k]) for k in ("label", "model", "scenario", "scheduler") if k in p)
        m = rec.get("metrics", {})
        if rec.get("ok") and "p99_ms" in m:
            what += f": mean {m['mean_ms']:.3g} ms, p99 {m['p99_ms']:.3g} ms, SLO {m['slo_attainment']:.3f}"
    if not rec.get("ok"):
        what += f": FAILED {rec.get('error', '')}"
    return what + f" [{rec.get('elapsed_s', 0):.1f} s]"


class _Bar:
    """A rich progress bar with ETA on a terminal; one line per task otherwise."""

    def __init__(self, total: int, name: str, enabled: bool, say):
        self.total, self.enabled, self.say, self.n = total, enabled, say, 0
        self.t0 = time.monotonic()
        self.progress = None
        if enabled and total:
            import sys

            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            console = Console(file=sys.stderr)
            self.live = console.is_terminal
            self.progress = Progress(TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=console, disable=not self.live)
            self.task = self.progress.add_task(name, total=total)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def advance(self, text: str):
        self.n += 1
        if self.progress is None:
            return
        if self.live:
            self.progress.advance(self.task)
            if "FAILED" in text:
                self.progress.console.print(text, markup=False, highlight=False)
        else:
            dt = time.monotonic() - self.t0
            eta = dt / self.n * (self.total - self.n)
            self.say(f"[{self.n}/{self.total} {dt:.0f} s, ETA {eta:.0f} s] {text}")
