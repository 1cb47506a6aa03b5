"""Writing results so that nothing is left half-written (docs/reliability.md).

* :func:`atomic_write`: one file, through a temporary file in the same folder renamed
  into place (``os.replace``): a reader sees the old file or the new one, never a part.
* :func:`staged_output`: the files of one result (compare's CSVs, plots and report;
  serve's requests and summary; ...) are written into a staging folder first and then
  published together: Ctrl-C or SIGTERM during the publication is held until it is
  done, any other failure puts the old files back, and a manifest written last
  (``<command>.manifest.json``: every file's size and SHA-256) tells a complete result
  from one a SIGKILL cut short (:func:`check_manifest`).
* :func:`path_problem` and the click callbacks :func:`out_file` / :func:`out_dir`: an
  output location that cannot be written is refused when the command line is parsed,
  before any work, with the option and the path (exit status 2).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_write", "staged_output", "Stage", "deferred_signals", "sigterm_as_interrupt", "check_manifest",
           "manifest_name", "path_problem", "out_file", "out_dir"]

_PARTIAL = "fluidnpu-partial"


# -- one file --------------------------------------------------------------------------

def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> int:
    """Write ``path`` whole or not at all; return its size in bytes.

    ``data``: bytes, text (UTF-8) or a function writing to a binary file. The temporary
    file ``.<name>.<random>.tmp`` beside ``path`` is flushed to disk, renamed over
    ``path`` and removed on any failure (also Ctrl-C); the old file stays until then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


# -- signals ---------------------------------------------------------------------------

@contextlib.contextmanager
def deferred_signals(signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver them (a few renames
    must happen all or none). Only the main thread can set handlers; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for s in signals:
        old[s] = signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so ``finally``
    blocks run: temporary folders and child processes are cleaned up. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# -- several files as one result -----------------------------------------------------------

def manifest_name(command: str) -> str:
    """The manifest file of ``command``'s results in their folder."""
    return f"{command}.manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_under(root: Path) -> list[Path]:
    """Files below ``root`` as relative paths, sorted."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_stages(folder: Path, prefix: str) -> None:
    """Remove staging folders left by killed processes (their pid is in the name)."""
    if not folder.is_dir():
        return
    for d in folder.glob(f"{prefix}-*"):
        try:
            pid = int(d.name[len(prefix) + 1:].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


class Stage:
    """Where a command writes one result's files before :func:`staged_output` publishes them."""

    def __init__(self, target: Path, path: Path, given: Path):
        self.target = target            #: the folder published into (absolute)
        self.path = path                #: the staging folder to write into
        self.given = given              #: the folder as the caller named it
        self.extra: dict = {}           #: added to the manifest (e.g. {"complete": False})

    def final(self, p: str | Path) -> Path:
        """Where the staged file ``p`` (a path in the stage or a relative one) ends up,
        under the folder as the caller named it."""
        p = Path(p)
        return self.given / (p.relative_to(self.path) if p.is_absolute() else p)


@contextlib.contextmanager
def staged_output(target: str | Path, command: str, *, manifest: bool = True) -> Iterator[Stage]:
    """Stage the files of one result, then publish them into ``target`` together.

    The block writes into ``stage.path`` (a hidden folder inside ``target``, or beside it
    when ``target`` does not exist yet: the same file system either way). When the block
    ends without an exception the files are moved into ``target``; the files the previous
    manifest of ``command`` listed that are not written again are removed; the manifest
    is written last. Files of ``target`` that are not ``command``'s are never touched.
    On an exception nothing in ``target`` changes and the stage is removed.
    """
    given = Path(target)
    target = given.absolute()
    if target.is_dir():
        _remove_stale_stages(target, f".{_PARTIAL}")
        stage = target / f".{_PARTIAL}-{os.getpid()}-{secrets.token_hex(4)}"
    else:
        _remove_stale_stages(target.parent, f".{target.name}.{_PARTIAL}")
        stage = target.parent / f".{target.name}.{_PARTIAL}-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    st = Stage(target, stage, given)
    try:
        yield st
        _publish(st, command, manifest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _read_manifest(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("files"), dict) else None


def _publish(st: Stage, command: str, manifest: bool) -> None:
    target, stage = st.target, st.path
    new = _files_under(stage)
    if manifest:
        files = {str(rel): {"bytes": (stage / rel).stat().st_size, "sha256": _sha256(stage / rel)} for rel in new}
        from fluidnpu import __version__
        doc = {"tool": "fluidnpu", "version": __version__, "command": command, "complete": True, **st.extra,
               "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "files": files}
    mname = Path(manifest_name(command))
    old = _read_manifest(target / mname) if manifest else None
    stale = [Path(n) for n in (old or {}).get("files", {})       # only plain names below the folder
             if Path(n) not in new and not Path(n).is_absolute() and ".." not in Path(n).parts]
    backup = stage / ".old"
    done: list[tuple[Path, bool]] = []       # (relative path, an old file was kept in backup)

    def take_out(rel: Path) -> None:
        """Move ``target/rel`` into the backup (put back if the publication fails)."""
        dst, bak = target / rel, backup / rel
        bak.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dst, bak)
        done.append((rel, True))

    with deferred_signals():
        target.mkdir(parents=True, exist_ok=True)
        try:
            if manifest and (target / mname).exists():
                take_out(mname)
            for rel in new:
                dst, bak = target / rel, backup / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                had = dst.is_file() or dst.is_symlink()
                if had:
                    bak.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(dst, bak)            # the old file stays in place until replaced
                    except OSError:
                        shutil.copy2(dst, bak)
                os.replace(stage / rel, dst)
                done.append((rel, had))
            for rel in stale:
                if (target / rel).is_file():
                    take_out(rel)
            if manifest:
                atomic_write(target / mname, json.dumps(doc, indent=1) + "\n")
        except BaseException:
            for rel, had in reversed(done):
                with contextlib.suppress(OSError):
                    if had:
                        os.replace(backup / rel, target / rel)
                    else:
                        (target / rel).unlink()
            raise


def check_manifest(folder: str | Path, command: str) -> list[str]:
    """What is wrong with ``command``'s result in ``folder`` (empty: complete and intact)."""
    folder = Path(folder)
    m = _read_manifest(folder / manifest_name(command))
    if m is None:
        return [f"{folder / manifest_name(command)}: missing or unreadable (the result is incomplete)"]
    out = []
    if m.get("complete") is False:
        out.append(f"{folder / manifest_name(command)}: the result says it is not complete")
    for name, info in m["files"].items():
        p = folder / name
        if not p.is_file():
            out.append(f"{p}: missing")
        elif p.stat().st_size != info.get("bytes") or _sha256(p) != info.get("sha256"):
            out.append(f"{p}: not the file the manifest lists (size or SHA-256 differ)")
    return out


# -- checking output locations before the work ---------------------------------------------

def _probe(folder: Path) -> str | None:
    """Whether a file can be created in the existing folder ``folder`` (tried, not guessed:
    permissions, read-only mounts and ACLs all count)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".fluidnpu-probe-", dir=folder)
    except OSError as e:
        return f"cannot create files in {folder} ({e.strerror or e})"
    os.close(fd)
    os.unlink(name)
    return None


def path_problem(path: str | Path, kind: str) -> str | None:
    """Why ``path`` cannot be written as a ``kind`` ("file" or "dir"); None if it can.

    Every existing ancestor must be a folder and the nearest one writable; a file must
    not be an existing folder, a folder not an existing file.
    """
    p = Path(path)
    if kind == "file" and p.is_dir():
        return f"{path} is a folder; give a file name"
    if kind == "dir" and p.exists() and not p.is_dir():
        return f"{path} is a file, not a folder"
    for a in ([p] if kind == "dir" else []) + [p.parent, *p.parent.parents]:
        if not a.exists():
            if a.is_symlink():
                return f"{path}: {a} is a broken symbolic link"
            continue
        if not a.is_dir():
            return f"{path}: {a} is a file, not a folder"
        problem = _probe(a)
        return None if problem is None else f"{path}: {problem}"
    return None


def _check(kind: str):
    def callback(ctx, param, value):
        if value is None:
            return value
        import click
        problem = path_problem(value, kind)
        if problem is not None:
            raise click.BadParameter(problem, ctx=ctx, param=param)
        return value
    return callback


#: click option callbacks: refuse an output file / folder that cannot be written
out_file = _check("file")
out_dir = _check("dir")
