"""A classic-cycle Wishbone driver for the CSR slave of the bus-wrapped tops (used by the
benches and by the cocotb transport of the host driver)."""
from __future__ import annotations

from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["Csr", "CsrError"]


class CsrError(AssertionError):
    """The CSR slave answered ERR or not at all."""


class Csr:
    """32-bit register reads and writes on the CSR slave, one classic Wishbone cycle each:
    CYC, STB and the request are driven after a rising edge and held until ACK is seen
    (sampled in the ReadOnly phase), then dropped. Raises after ``timeout`` cycles
    without ACK."""

    def __init__(self, dut, timeout: int = 100):
        self.dut, self.timeout = dut, timeout
        self.edge = RisingEdge(dut.clk)
        for n in ("cyc", "stb", "we", "adr", "dat_w", "sel"):
            getattr(dut, f"csr__{n}").value = 0

    async def _cycle(self, offset: int, we: int, value: int = 0) -> int:
        d = self.dut
        await self.edge
        d.csr__adr.value = offset >> 2
        d.csr__we.value = we
        d.csr__dat_w.value = value & 0xFFFFFFFF
        d.csr__sel.value = 0xF
        d.csr__cyc.value = 1
        d.csr__stb.value = 1
        for _ in range(self.timeout):
            await ReadOnly()
            if int(d.csr__err.value):
                raise CsrError(f"CSR {'write' if we else 'read'} {offset:#x}: ERR")
            if int(d.csr__ack.value):
                data = int(d.csr__dat_r.value)
                await self.edge
                d.csr__cyc.value = 0
                d.csr__stb.value = 0
                d.csr__we.value = 0
                return data
            await self.edge
        raise CsrError(f"CSR {'write' if we else 'read'} {offset:#x}: no ACK in {self.timeout} cycles")

    async def write(self, offset: int, value: int) -> None:
        await self._cycle(offset, 1, value)

    async def read(self, offset: int) -> int:
        return await self._cycle(offset, 0)
