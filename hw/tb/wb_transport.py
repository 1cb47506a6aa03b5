"""The host driver's :class:`~fluidnpu.board.transport.Transport` on a simulated wrapped
NPU: register accesses are classic Wishbone cycles on its CSR slave
(:class:`~.wb_csr.Csr`), memory accesses go straight to the array the Wishbone memory
model serves (as a UART bridge reaches the SoC's SDRAM beside the NPU).

The driver is blocking code; it runs in a thread started with cocotb's ``bridge``, and
each access here hands over to the simulator with ``resume`` until its bus cycle is
done, so the simulation only advances while the driver waits for the bus, as on a
board.
"""
from __future__ import annotations

import numpy as np
from cocotb.task import resume

from .wb_csr import Csr

__all__ = ["CocotbTransport"]


class CocotbTransport:
    def __init__(self, csr: Csr, mem: np.ndarray):
        self.mem = mem
        self._read = resume(csr.read)
        self._write = resume(csr.write)
        self.reads = self.writes = 0

    def read32(self, addr: int) -> int:
        self.reads += 1
        return self._read(addr)

    def write32(self, addr: int, value: int) -> None:
        self.writes += 1
        self._write(addr, value)

    def _span(self, addr: int, n: int) -> slice:
        if addr < 0 or n < 0 or addr + n > len(self.mem):
            raise ValueError(f"memory access {addr:#x} + {n}: outside the simulated memory of "
                             f"{len(self.mem)} bytes")
        return slice(addr, addr + n)

    def write_mem(self, addr: int, data: bytes) -> None:
        self.mem[self._span(addr, len(data))] = np.frombuffer(bytes(data), dtype=np.uint8)

    def read_mem(self, addr: int, n: int) -> bytes:
        return self.mem[self._span(addr, n)].tobytes()
