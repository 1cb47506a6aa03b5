"""Latency tables from the policy mapper (the cycle model), cached in-process.

The serving simulator's service times come from here by default:
``fluidnpu.sched.mapper.map_model(cfg, model, hardware).latency_table()``, so every
change to the cycle model or the mapper (e.g. per-layer FBE overheads) flows into
serving results. Mapping a zoo model takes ~0.1-1 s; tables are cached per
(model, hardware, hardware configuration, B_max) for the life of the process.
"""
from __future__ import annotations

from ..latency import LatencyTable
from ..workloads.model import EEModel

__all__ = ["HARDWARE_VARIANTS", "mapper_table", "mapper_tables", "clear_cache"]

HARDWARE_VARIANTS = ("rbatch", "fluid")
_CACHE: dict = {}


def _model_key(model: EEModel):
    return (model.name, tuple((L.name, L.r, L.p, L.c, getattr(L, "groups", 1)) for L in model.layers),
            tuple((e.after, tuple((L.name, L.r, L.p, L.c, getattr(L, "groups", 1)) for L in e.layers))
                  for e in model.exits))


def mapper_table(model: EEModel, hardware: str = "fluid", cfg=None, b_max: int = 16) -> LatencyTable:
    """The latency table of ``model`` on ``hardware`` (``rbatch``, ``stack`` or ``fluid``) from the mapper."""
    from fluidnpu.hw.config import HwConfig
    from fluidnpu.sched.mapper import map_model
    cfg = HwConfig() if cfg is None else cfg
    key = (_model_key(model), hardware, cfg.key(), b_max)
    t = _CACHE.get(key)
    if t is None:
        t = _CACHE[key] = map_model(cfg, model, hardware, b_max=b_max).latency_table()
    return t


def mapper_tables(models, hardware: str = "fluid", cfg=None, b_max: int = 16) -> dict[str, LatencyTable]:
    """Tables for several models (an iterable of EEModels, e.g. ``Scenario.models``), by model name."""
    return {m.name: mapper_table(m, hardware, cfg, b_max) for m in models}


def clear_cache() -> None:
    _CACHE.clear()
