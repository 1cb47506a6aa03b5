"""Reset and configuration of the NPU with its FBE from a cocotb bench (shared by the
FBE bench and the co-simulation bench)."""
from __future__ import annotations

from cocotb.triggers import RisingEdge

from fluidnpu.hw.fbe_layout import prog_write_layout, table_write_layout
from fluidnpu.hw.tb.memory import MemoryModel

__all__ = ["RESET_CYCLES", "reset_fbe", "configure_fbe", "read_int"]

RESET_CYCLES = 5


def read_int(sig, what, error=AssertionError):
    """A settled signal's value; X or Z raises ``error`` naming ``what``."""
    try:
        return int(sig.value)
    except ValueError:
        raise error(f"{what} is X/Z ({sig.value})") from None


async def reset_fbe(dut, cycles=RESET_CYCLES):
    """Hold reset for ``cycles`` with every input stream idle and the outputs taken."""
    dut.rst.value = 1
    for n in ("prog__valid", "table__valid", "admit__valid", "preempt__valid"):
        getattr(dut, n).value = 0
    dut.results__ready.value = 1
    dut.events__ready.value = 1
    MemoryModel.drive_idle(dut)
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def configure_fbe(dut, cfg, entries, table, res_addr, res_shift, step):
    """Write the program (packed entries, hex strings or ints) and the control table
    (``(b, lid, word)`` rows) through their ports; set the result areas and step mode."""
    edge = RisingEdge(dut.clk)
    pl = prog_write_layout(cfg)
    el_bits = pl["entry"].offset
    for i, e in enumerate(entries):
        await edge
        dut.prog__valid.value = 1
        dut.prog__payload.value = i | ((int(e, 16) if isinstance(e, str) else int(e)) << el_bits)
    await edge
    dut.prog__valid.value = 0
    tl = table_write_layout(cfg)
    for b, lid, word in table:
        await edge
        dut.table__valid.value = 1
        dut.table__payload.value = (b << tl["b"].offset) | (lid << tl["lid"].offset) | (word << tl["word"].offset)
    await edge
    dut.table__valid.value = 0
    dut.res_addr.value = res_addr
    dut.res_shift.value = res_shift
    dut.step.value = int(step)
