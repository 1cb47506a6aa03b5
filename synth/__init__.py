"""fluidnpu.synth: the open-source synthesis flow (yosys, nextpnr, amaranth-boards).

``synthesize(cfg, target, out_dir)`` gives a :class:`SynthResult` (LUTs, flip-flops,
DSPs, block RAMs, their share of the device, Fmax, fits); see docs/synthesis.md.
"""
from .flow import synthesize
from .result import SynthResult, format_table
from .targets import TARGETS
from .tools import SynthError, ToolFailed, ToolMissing

__all__ = ["synthesize", "SynthResult", "format_table", "TARGETS", "SynthError", "ToolFailed",
           "ToolMissing"]
