"""``make mutants``: apply small plausible bugs one at a time and run the tests that should
catch each; print killed/survived per mutant (docs/reliability.md, "Mutation check").

The mutants are listed in ``tests/mutants/mutants.toml``: per mutant the file, an exact
snippet of it (found exactly once), its replacement and the pytest node ids that must fail.
A mutant whose snippet is gone is *stale*: an error, so the list cannot rot silently
(``tests/test_mutants.py`` checks the same in ``make test``).

A mutant is applied in place and restored in a ``finally`` (Ctrl-C, SIGTERM and SIGHUP
included); a journal (``build/mutants/journal.json``, the original text) restores the file
on the next run should the process be killed outright. The tests run in their own process
group with a timeout; Python's bytecode goes to a fresh cache folder per run
(``PYTHONPYCACHEPREFIX``) and simulator builds to a temporary build folder, so nothing of a
mutant outlives its run. The selected tests first run once on the unchanged tree: a kill
counts only if they pass there.

Exit status: 0 when every mutant is killed, 1 when one survived, was stale or its tests
could not run, 2 for a bad list or command line.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "tests" / "mutants" / "mutants.toml"
STATE = ROOT / "build" / "mutants"
JOURNAL = STATE / "journal.json"
KEYS = {"id", "file", "original", "replacement", "tests", "why"}


class ListError(ValueError):
    """The mutant list is malformed (a key, a type, a duplicate id)."""


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str                 #: path from the repository root
    original: str             #: exact text, found exactly once in the file
    replacement: str
    tests: tuple[str, ...]    #: pytest node ids that should fail on the mutant
    why: str                  #: the bug it stands for

    @property
    def path(self) -> Path:
        return ROOT / self.file

    def problem(self) -> str | None:
        """Why the mutant cannot be applied (stale snippet, no change, broken syntax), or None."""
        if not self.path.is_file():
            return f"{self.file}: no such file"
        text = self.path.read_text()
        n = text.count(self.original)
        if n != 1:
            return f"{self.file}: the original snippet occurs {n} times (must be exactly once)"
        if self.original == self.replacement:
            return "the replacement equals the original"
        if self.path.suffix == ".py":
            try:
                ast.parse(self.mutated(text), str(self.path))
            except SyntaxError as e:
                return f"the mutated {self.file} does not parse: {e}"
        for t in self.tests:
            f = t.split("::")[0]
            if not (ROOT / f).is_file():
                return f"test file {f}: no such file"
        return None

    def mutated(self, text: str) -> str:
        return text.replace(self.original, self.replacement, 1)


def load(path: Path = LIST) -> list[Mutant]:
    """The mutants of ``path``; raises :class:`ListError` naming the entry and the key."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ListError(f"{path}: {e}") from None
    out, seen = [], set()
    for i, d in enumerate(data.get("mutant", [])):
        where = f"{path.name}: mutant {i + 1} ({d.get('id', '?')})"
        if set(d) != KEYS:
            raise ListError(f"{where}: keys {sorted(d)}; must be exactly {sorted(KEYS)}")
        if not all(isinstance(d[k], str) and d[k] for k in KEYS - {"tests"}):
            raise ListError(f"{where}: id, file, original, replacement and why must be non-empty strings")
        if not isinstance(d["tests"], list) or not d["tests"] or not all(isinstance(t, str) for t in d["tests"]):
            raise ListError(f"{where}: tests must be a non-empty list of pytest node ids")
        if any(t.startswith("-") for t in d["tests"]):
            raise ListError(f"{where}: tests are node ids (file.py or file.py::test[param]), not options")
        if d["id"] in seen:
            raise ListError(f"{where}: id {d['id']!r} is used twice")
        seen.add(d["id"])
        out.append(Mutant(d["id"], d["file"], d["original"], d["replacement"], tuple(d["tests"]), d["why"]))
    if not out:
        raise ListError(f"{path}: no [[mutant]] entries")
    return out


# -- applying and restoring ------------------------------------------------------------------

def _write_journal(m: Mutant, original: str, mtime_ns: int) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    tmp = JOURNAL.with_suffix(".tmp")
    tmp.write_text(json.dumps({"id": m.id, "file": m.file, "text": original, "mtime_ns": mtime_ns}))
    os.replace(tmp, JOURNAL)


def recover() -> str | None:
    """Restore a file a killed run left mutated (from the journal); say what was done."""
    if not JOURNAL.is_file():
        return None
    j = json.loads(JOURNAL.read_text())
    path = ROOT / j["file"]
    path.write_text(j["text"])
    os.utime(path, ns=(j["mtime_ns"], j["mtime_ns"]))
    JOURNAL.unlink()
    return f"restored {j['file']} (mutant {j['id']} of an interrupted run)"


_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class _Applied:
    """``with _Applied(m):`` the file holds the mutant; afterwards its original text and
    modification time (so no bytecode of the mutant is ever taken for the original).
    Writing and restoring run with the interrupting signals blocked, so a Ctrl-C cannot
    cut them in half; the journal covers a SIGKILL."""

    def __init__(self, m: Mutant):
        self.m = m

    def __enter__(self):
        p = self.m.path
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self.text = p.read_text()
            self.mtime_ns = p.stat().st_mtime_ns
            _write_journal(self.m, self.text, self.mtime_ns)
            p.write_text(self.m.mutated(self.text))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return self

    def __exit__(self, *exc):
        p = self.m.path
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            p.write_text(self.text)
            os.utime(p, ns=(self.mtime_ns, self.mtime_ns))
            JOURNAL.unlink(missing_ok=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# -- running the tests ------------------------------------------------------------------------

@dataclass
class Outcome:
    status: str               #: killed, survived, timeout (counts as killed), stale, error
    seconds: float = 0.0
    detail: str = ""
    failed: list = field(default_factory=list)


def _pytest(tests, timeout: float, build_dir: Path, python: str) -> tuple[int | None, str, float]:
    """Run pytest on ``tests`` in its own process group; (exit code or None on timeout, output, s)."""
    env = dict(os.environ)
    env["FLUIDNPU_BUILD_DIR"] = str(build_dir)
    env.pop("PYTEST_ADDOPTS", None)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fluidnpu-mutant-pyc-") as pyc:
        env["PYTHONPYCACHEPREFIX"] = pyc
        cmd = [python, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-p", "no:randomly",
               "-o", "addopts=", *tests]
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            out, rc = "", None
        finally:
            if p.poll() is None or rc is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.communicate()
    return rc, out, time.monotonic() - t0


def _failed_ids(out: str) -> list[str]:
    return [ln.split()[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]


def run_one(m: Mutant, timeout: float, build_dir: Path, python: str) -> Outcome:
    why = m.problem()
    if why:
        return Outcome("stale", detail=why)
    with _Applied(m):
        rc, out, dt = _pytest(m.tests, timeout, build_dir, python)
    if rc is None:
        return Outcome("timeout", dt, f"no result after {timeout:.0f} s (a hang counts as caught)")
    if rc == 1:
        return Outcome("killed", dt, failed=_failed_ids(out))
    if rc == 0:
        return Outcome("survived", dt)
    tail = "\n".join(out.strip().splitlines()[-5:])
    return Outcome("error", dt, f"pytest exit status {rc}:\n{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tools/mutants.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", type=Path, default=LIST, help="mutant list (TOML)")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unchanged tree")
    ap.add_argument("--json", type=Path, default=STATE / "result.json", help="where the result goes")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs pytest")
    a = ap.parse_args(argv)
    if a.timeout <= 0:
        ap.error(f"--timeout {a.timeout}: must be > 0")
    try:
        mutants = load(a.list)
    except ListError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.only:
        unknown = sorted(set(a.only) - {m.id for m in mutants})
        if unknown:
            print(f"error: --only {', '.join(unknown)}: not in {a.list} "
                  f"(ids: {', '.join(m.id for m in mutants)})", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in a.only]
    handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(a, mutants)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


def _run(a, mutants: list[Mutant]) -> int:
    msg = recover()
    if msg:
        print(msg)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    t_start = time.monotonic()
    results: dict[str, Outcome] = {}
    build_dir = Path(tempfile.mkdtemp(prefix="fluidnpu-mutant-build-"))
    try:
        if not a.no_baseline:
            tests = sorted({t for m in mutants if not m.problem() for t in m.tests})
            print(f"baseline: {len(tests)} test ids on the unchanged tree ...", flush=True)
            rc, out, dt = _pytest(tests, a.timeout * 2, build_dir, a.python)
            if rc != 0:
                print(f"error: the selected tests do not pass without a mutant (exit status {rc}, {dt:.0f} s); "
                      f"a kill would mean nothing:\n" + "\n".join(out.strip().splitlines()[-15:]), file=sys.stderr)
                return 1
            print(f"baseline: passed in {dt:.0f} s", flush=True)
        width = max(len(m.id) for m in mutants)
        for i, m in enumerate(mutants, 1):
            print(f"[{i}/{len(mutants)}] {m.id:<{width}} ", end="", flush=True)
            r = results[m.id] = run_one(m, a.timeout, build_dir, a.python)
            note = r.failed[0] if r.failed else r.detail.splitlines()[0] if r.detail else ""
            print(f"{r.status:<8} {r.seconds:6.1f} s  {note}", flush=True)
            if r.status == "error":
                print(r.detail, file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: the tree is restored", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    total = time.monotonic() - t_start
    counts = {s: sum(r.status == s for r in results.values())
              for s in ("killed", "timeout", "survived", "stale", "error")}
    print(f"\n{counts['killed'] + counts['timeout']} of {len(results)} mutants killed "
          f"({counts['timeout']} by timeout); survived {counts['survived']}, stale {counts['stale']}, "
          f"error {counts['error']}; {total / 60:.1f} min; commit {commit}{' (with changes)' if dirty else ''}")
    for m in mutants:
        r = results[m.id]
        if r.status in ("survived", "stale", "error"):
            print(f"  {r.status.upper()}: {m.id} ({m.file}): {m.why}" + (f" -- {r.detail}" if r.detail else ""))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "commit": commit, "dirty": dirty, "seconds": round(total, 1),
        "counts": counts,
        "mutants": [{"id": m.id, "file": m.file, "why": m.why, "tests": list(m.tests),
                     "status": results[m.id].status, "seconds": round(results[m.id].seconds, 1),
                     "failed": results[m.id].failed, "detail": results[m.id].detail} for m in mutants],
    }, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0 if counts["survived"] + counts["stale"] + counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
