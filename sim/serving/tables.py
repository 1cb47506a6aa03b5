"""Latency tables from the policy mapper (the cycle model), cached in-process and on disk.

The serving simulator's service times come from here by default:
``fluidnpu.sched.mapper.map_model(cfg, model, hardware).latency_table()``, so every
change to the cycle model or the mapper (e.g. per-layer FBE overheads) flows into
serving results. Mapping a zoo model takes ~0.1-1 s, a third of a 200 000-request run,
so tables are kept per (model, hardware, hardware configuration, B_max, memory timing) for the life of
the process and in a file cache (``cache_dir()``: platformdirs' user cache directory,
which honours ``XDG_CACHE_HOME``). A file's name carries a digest of the model's
layer shapes, the configuration (every field, the clock too), B_max, the memory timing and the source of
the modules that compute tables, so a change to any of them misses the cache instead
of serving stale cycles. Writes are atomic (a temporary file renamed into place); an
unreadable or foreign entry is recomputed and replaced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from ..latency import LatencyTable, LatencyTableError
from ..workloads.model import EEModel

__all__ = ["HARDWARE_VARIANTS", "mapper_table", "mapper_tables", "clear_cache", "cache_dir", "cache_key",
           "CACHE_ENV"]

HARDWARE_VARIANTS = ("rbatch", "fluid")
#: set to "0" to neither read nor write the file cache (the in-process cache stays)
CACHE_ENV = "FLUIDNPU_TABLE_CACHE"
_FORMAT = 1
_CACHE: dict = {}
#: the modules whose source decides a table's cycles (a change to any of them is a new key)
_SOURCES = ("fluidnpu.sched.mapper", "fluidnpu.sim.cycle_model", "fluidnpu.sim.fbe_model", "fluidnpu.sim.latency",
            "fluidnpu.sim.workloads.model", "fluidnpu.hw.config", "fluidnpu.hw.interface", "fluidnpu.hw.runner",
            "fluidnpu.sim.serving.tables")
_code_digest: str | None = None


def cache_dir() -> Path:
    """Where the file cache lives: ``<user cache dir>/fluidnpu/latency_tables`` (``$XDG_CACHE_HOME`` on Linux)."""
    import platformdirs
    return Path(platformdirs.user_cache_dir("fluidnpu", appauthor=False)) / "latency_tables"


def _code() -> str:
    global _code_digest
    if _code_digest is None:
        h = hashlib.sha256()
        for name in _SOURCES:
            spec = importlib.util.find_spec(name)
            h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
        _code_digest = h.hexdigest()
    return _code_digest


def _layer(L) -> list:
    return [L.name, L.r, L.p, L.c, L.groups]


def _model_key(model: EEModel) -> tuple:
    return (model.name, tuple(tuple(_layer(L)) for L in model.layers),
            tuple((e.after, tuple(tuple(_layer(L)) for L in e.layers)) for e in model.exits))


def cache_key(model: EEModel, hardware: str, cfg, b_max: int, mem=None) -> str:
    """The hex digest naming a table: model shapes, hardware, every configuration field, B_max,
    the memory timing, code."""
    d = {"format": _FORMAT, "model": _model_key(model), "hardware": hardware, "b_max": b_max,
         "cfg": dataclasses.asdict(cfg), "code": _code(), "mem": _mem(mem).to_dict()}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _file(model: EEModel, hardware: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)[:40]
    return cache_dir() / f"{safe}-{hardware}-{key[:24]}.json"


def _read(path: Path, key: str, model: EEModel) -> LatencyTable | None:
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("key") != key:
            return None
        t = LatencyTable.from_dict(d["table"], where=str(path))
        t.check_model(model)
        return t
    except (OSError, ValueError, KeyError, TypeError, LatencyTableError):
        return None


def _write(path: Path, key: str, table: LatencyTable) -> None:
    """Atomically (:func:`fluidnpu.outputs.atomic_write`: a temporary file in the same
    directory, renamed over the entry). A cache that cannot be written (read-only home,
    full disk) is skipped silently."""
    from fluidnpu.outputs import atomic_write
    try:
        atomic_write(path, json.dumps({"key": key, "table": table.to_dict()}))
    except OSError:
        pass


def _mem(mem):
    from fluidnpu.hw.runner import MemTiming
    return MemTiming() if mem is None else mem


def mapper_table(model: EEModel, hardware: str = "fluid", cfg=None, b_max: int = 16, mem=None) -> LatencyTable:
    """The latency table of ``model`` on ``hardware`` (``rbatch``, ``stack`` or ``fluid``) from the
    mapper, with the memory timing ``mem`` (a :class:`~fluidnpu.hw.runner.MemTiming`; default
    ``MemTiming()``, the ``test`` preset of :mod:`fluidnpu.sim.memory`)."""
    from fluidnpu.hw.config import HwConfig
    cfg = HwConfig() if cfg is None else cfg
    mem = _mem(mem)
    mkey = (_model_key(model), hardware, tuple(sorted(dataclasses.asdict(cfg).items())), b_max, mem)
    t = _CACHE.get(mkey)
    if t is not None:
        return t
    use_files = os.environ.get(CACHE_ENV, "1") != "0"
    if use_files:
        key = cache_key(model, hardware, cfg, b_max, mem)
        path = _file(model, hardware, key)
        t = _read(path, key, model)
    if t is None:
        from fluidnpu.sched.mapper import map_model
        t = map_model(cfg, model, hardware, b_max=b_max, mem=mem).latency_table()
        if use_files:
            _write(path, key, t)
    _CACHE[mkey] = t
    return t


def mapper_tables(models, hardware: str = "fluid", cfg=None, b_max: int = 16, mem=None) -> dict[str, LatencyTable]:
    """Tables for several models (an iterable of EEModels, e.g. ``Scenario.models``), by model name."""
    return {m.name: mapper_table(m, hardware, cfg, b_max, mem) for m in models}


def clear_cache() -> None:
    """Forget the in-process tables (the file cache stays)."""
    _CACHE.clear()
