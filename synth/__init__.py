"""fluidnpu.synth: the open-source synthesis flow (yosys, nextpnr, amaranth-boards).

``synthesize(cfg, target, out_dir)`` gives a :class:`SynthResult` (LUTs, flip-flops,
DSPs, block RAMs, their share of the device, Fmax, fits); see docs/synthesis.md.
The names below are imported on first use, so ``fluidnpu.synth.choices`` and
``fluidnpu.synth.targets`` (the command line's option values) load without the flow.
"""
from __future__ import annotations

import importlib

__all__ = ["synthesize", "SynthResult", "format_table", "TARGETS", "SynthError", "ToolFailed",
           "ToolMissing"]

_WHERE = {"synthesize": ".flow", "SynthResult": ".result", "format_table": ".result",
          "TARGETS": ".targets", "SynthError": ".tools", "ToolFailed": ".tools",
          "ToolMissing": ".tools"}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
