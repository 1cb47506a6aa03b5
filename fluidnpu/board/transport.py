"""How the host driver reaches the NPU: a :class:`Transport` moves 32-bit words to and
from the CSR slave, and bytes to and from the NPU's memory.

The driver (:mod:`.driver`) is written against this protocol only, so the same code runs
against the simulated wrapped NPU (``hw/tb/board_tb.py``: Wishbone register cycles in
cocotb) and, later, against a board (a UART bridge such as LiteX's UARTBone).

Addresses:

* ``read32`` / ``write32`` take **byte offsets inside the CSR region** (the offsets of
  docs/registers.md); the transport adds the region's base on its bus;
* ``write_mem`` / ``read_mem`` take **byte addresses as the NPU sees them** on its
  memory master. The memory is not the NPU's: on a board it is the SoC's SDRAM, reached
  by the bridge directly; in simulation it is the bus model's array. The NPU reads and
  writes it only while it runs layers, so the host loads weights and inputs before it
  admits the samples that use them and reads results after they are reported.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Transport"]


@runtime_checkable
class Transport(Protocol):
    """Register and memory access to one wrapped NPU (blocking calls)."""

    def read32(self, addr: int) -> int:
        """The 32-bit register at byte offset ``addr`` of the CSR region."""

    def write32(self, addr: int, value: int) -> None:
        """Write the 32-bit ``value`` to the register at byte offset ``addr`` (all byte
        lanes)."""

    def write_mem(self, addr: int, data: bytes) -> None:
        """Store ``data`` at byte address ``addr`` of the NPU's memory."""

    def read_mem(self, addr: int, n: int) -> bytes:
        """``n`` bytes from byte address ``addr`` of the NPU's memory."""
