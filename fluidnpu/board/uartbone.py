"""The host driver's :class:`~.transport.Transport` over LiteX's UARTBone (a UART-to-Wishbone
bridge), the link to the NPU in the ULX3S SoC (docs/board.md).

The framing is LiteX's (``litex/soc/cores/uart.py``, ``Stream2Wishbone``; the same as its
``litex/tools/remote/comm_uart.py``): a command byte (``0x01`` write burst, incrementing
address; ``0x02`` read burst), a length byte (words, 1..255: 0 would never end), the
**word** address (byte address / 4) in 4 bytes, big-endian, then for a write the data
words, each 4 bytes big-endian; a read answers with its words the same way. Writes have
no answer. The bridge resets itself when one command takes more than 100 ms, so bursts
are cut to what the line carries in 50 ms (255 words from 1 Mbaud up).

Memory bytes sit in the SDRAM's 32-bit words little-endian (byte ``a`` in lane
``a % 4``, as the NPU's Wishbone master writes them); unaligned edges are read,
merged and written back.
"""
from __future__ import annotations

import time

__all__ = ["UartBone", "UartBoneError", "UartBoneTransport", "init_sdram", "check_memory", "burst_limit",
           "CMD_WRITE", "CMD_READ"]

CMD_WRITE = 0x01        #: CMD_WRITE_BURST_INCR
CMD_READ = 0x02         #: CMD_READ_BURST_INCR
MAX_WORDS = 255         #: the length byte
_BUDGET_S = 0.05        #: half of the bridge's 100 ms per-command timer


class UartBoneError(RuntimeError):
    """The serial link did not do what was asked (names the port and what happened)."""


def burst_limit(baud: int) -> int:
    """Most words per command so one command takes at most 50 ms on the line (10 bits a byte)."""
    fit = (int(baud * _BUDGET_S / 10) - 6) // 4
    return max(1, min(MAX_WORDS, fit))


class UartBone:
    """Word access to the SoC's bus through UARTBone on ``port`` (a device or a pyserial
    URL); ``link``: an object with pyserial's ``write``/``read``/``reset_input_buffer``
    to use instead of opening ``port`` (tests)."""

    def __init__(self, port: str, baud: int = 1_000_000, *, timeout: float = 1.0, link=None,
                 max_words: int | None = None):
        self.port, self.baud, self.timeout = port, int(baud), float(timeout)
        self.max_words = burst_limit(self.baud) if max_words is None else int(max_words)
        if not 1 <= self.max_words <= MAX_WORDS:
            raise ValueError(f"max_words = {max_words}: must be from 1 to {MAX_WORDS}")
        if link is None:
            try:
                import serial
            except ImportError:
                raise UartBoneError("the serial link needs pyserial: pip install 'fluidnpu[board]'") from None
            try:
                link = serial.serial_for_url(port, self.baud, timeout=self.timeout)
            except (serial.SerialException, ValueError, OSError) as e:
                raise UartBoneError(f"{port}: cannot open the serial port at {self.baud} baud: {e}") from None
        self.link = link
        self.commands = self.bytes_out = self.bytes_in = 0

    def close(self) -> None:
        close = getattr(self.link, "close", None)
        if close:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
        return False

    @staticmethod
    def _check(addr: int, n: int) -> None:
        if addr % 4 or not 0 <= addr or addr + 4 * n > 1 << 32:
            raise ValueError(f"address {addr:#x} (+{n} words): must be word-aligned inside the 32-bit bus")

    def _send(self, frame: bytes) -> None:
        try:
            n = self.link.write(frame)
        except OSError as e:
            raise UartBoneError(f"{self.port}: writing {len(frame)} bytes failed: {e}") from None
        if n is not None and n != len(frame):
            raise UartBoneError(f"{self.port}: wrote {n} of {len(frame)} bytes")
        self.commands += 1
        self.bytes_out += len(frame)

    def _recv(self, n: int, what: str) -> bytes:
        out = b""
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            try:
                part = self.link.read(n - len(out))
            except OSError as e:
                raise UartBoneError(f"{self.port}: reading {what} failed: {e}") from None
            out += part
            if len(out) < n and (not part and time.monotonic() > deadline):
                raise UartBoneError(f"{self.port}: {what}: got {len(out)} of {n} bytes within {self.timeout:g} s "
                                    f"(no SoC answering at {self.baud} baud? check the bitstream, the port and "
                                    f"--baud)")
        self.bytes_in += n
        return out

    def read_words(self, addr: int, n: int) -> list[int]:
        """``n`` 32-bit words from byte address ``addr`` (word-aligned)."""
        self._check(addr, n)
        words: list[int] = []
        reset = getattr(self.link, "reset_input_buffer", None)
        if reset:
            reset()         # stale bytes (a reset bridge's half answer) never pass for data
        while len(words) < n:
            k = min(self.max_words, n - len(words))
            a = addr + 4 * len(words)
            self._send(bytes([CMD_READ, k]) + (a // 4).to_bytes(4, "big"))
            raw = self._recv(4 * k, f"read of {k} words at {a:#010x}")
            words += [int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(k)]
        return words

    def write_words(self, addr: int, words) -> None:
        """Write 32-bit ``words`` from byte address ``addr`` (word-aligned)."""
        words = [int(w) for w in words]
        self._check(addr, len(words))
        for w in words:
            if not 0 <= w < 1 << 32:
                raise ValueError(f"word {w:#x}: not a 32-bit value")
        for i in range(0, len(words), self.max_words):
            chunk = words[i:i + self.max_words]
            a = addr + 4 * i
            self._send(bytes([CMD_WRITE, len(chunk)]) + (a // 4).to_bytes(4, "big")
                       + b"".join(w.to_bytes(4, "big") for w in chunk))


class UartBoneTransport:
    """The driver's :class:`~.transport.Transport`: CSR offsets at ``csr_base``, NPU memory
    byte ``a`` at SoC address ``mem_base + a`` (``mem_size`` bytes)."""

    def __init__(self, bone: UartBone, *, csr_base: int, mem_base: int, mem_size: int, csr_size: int = 0x1000):
        self.bone, self.csr_base, self.mem_base = bone, int(csr_base), int(mem_base)
        self.mem_size, self.csr_size = int(mem_size), int(csr_size)
        self.reads = self.writes = 0

    def _csr(self, addr: int) -> int:
        if addr % 4 or not 0 <= addr < self.csr_size:
            raise ValueError(f"CSR offset {addr:#x}: must be word-aligned below {self.csr_size:#x}")
        return self.csr_base + addr

    def read32(self, addr: int) -> int:
        self.reads += 1
        return self.bone.read_words(self._csr(addr), 1)[0]

    def write32(self, addr: int, value: int) -> None:
        self.writes += 1
        self.bone.write_words(self._csr(addr), [int(value) & 0xFFFFFFFF])

    def _span(self, addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > self.mem_size:
            raise ValueError(f"memory access {addr:#x} + {n}: outside the NPU's {self.mem_size:#x} bytes of SDRAM")

    def read_mem(self, addr: int, n: int) -> bytes:
        self._span(addr, n)
        if n == 0:
            return b""
        lo, hi = addr & ~3, (addr + n + 3) & ~3
        words = self.bone.read_words(self.mem_base + lo, (hi - lo) // 4)
        raw = b"".join(w.to_bytes(4, "little") for w in words)
        return raw[addr - lo:addr - lo + n]

    def write_mem(self, addr: int, data: bytes) -> None:
        data = bytes(data)
        self._span(addr, len(data))
        if not data:
            return
        lo, hi = addr & ~3, (addr + len(data) + 3) & ~3
        buf = bytearray(hi - lo)
        if addr != lo:                                  # partial first word: keep its other bytes
            buf[0:4] = self.read_mem(lo, 4)
        if addr + len(data) != hi:                      # partial last word
            buf[-4:] = self.read_mem(hi - 4, 4)
        buf[addr - lo:addr - lo + len(data)] = data
        words = [int.from_bytes(buf[i:i + 4], "little") for i in range(0, len(buf), 4)]
        self.bone.write_words(self.mem_base + lo, words)


# LiteDRAM's DFI injector fields (litedram/init.py, get_sdram_phy_py_header)
_DFII = {"DFII_CONTROL_SEL": 0x01, "DFII_CONTROL_CKE": 0x02, "DFII_CONTROL_ODT": 0x04,
         "DFII_CONTROL_RESET_N": 0x08, "DFII_COMMAND_CS": 0x01, "DFII_COMMAND_WE": 0x02,
         "DFII_COMMAND_CAS": 0x04, "DFII_COMMAND_RAS": 0x08, "DFII_COMMAND_WRDATA": 0x10,
         "DFII_COMMAND_RDDATA": 0x20}


def _flags(expr: str) -> tuple[str, int]:
    names = [p.strip() for p in expr.split("|") if p.strip()]
    bad = [p for p in names if p not in _DFII]
    if bad or not names:
        raise UartBoneError(f"SDRAM init: unknown DFI flags {bad or expr!r}")
    kinds = {p.split("_")[1] for p in names}
    if len(kinds) != 1:
        raise UartBoneError(f"SDRAM init: {expr!r} mixes CONTROL and COMMAND flags")
    v = 0
    for p in names:
        v |= _DFII[p]
    return kinds.pop(), v


def init_sdram(bone: UartBone, csr: dict, sequence, *, sleep=time.sleep) -> None:
    """Bring the SDRAM up as LiteX's BIOS would (no CPU here): replay LiteDRAM's init
    ``sequence`` (``(comment, address, bank, flags, delay_us)``, board.json's
    ``sdram_init``) through the DFI injector CSRs ``csr`` (name -> byte address), then
    hand the SDRAM to the controller."""
    need = ("sdram_dfii_control", "sdram_dfii_pi0_command", "sdram_dfii_pi0_command_issue",
            "sdram_dfii_pi0_address", "sdram_dfii_pi0_baddress")
    missing = [n for n in need if n not in csr]
    if missing:
        raise UartBoneError(f"SDRAM init: board.json lacks the CSRs {', '.join(missing)}")
    for _comment, a, ba, flags, delay_us in sequence:
        kind, v = _flags(flags)
        if kind == "CONTROL":
            bone.write_words(csr["sdram_dfii_control"], [v])
        else:
            bone.write_words(csr["sdram_dfii_pi0_address"], [int(a)])
            bone.write_words(csr["sdram_dfii_pi0_baddress"], [int(ba)])
            bone.write_words(csr["sdram_dfii_pi0_command"], [v])
            bone.write_words(csr["sdram_dfii_pi0_command_issue"], [1])
        if delay_us:
            sleep(delay_us * 1e-6)
    bone.write_words(csr["sdram_dfii_control"], [_DFII["DFII_CONTROL_SEL"] | _DFII["DFII_CONTROL_CKE"]
                                                 | _DFII["DFII_CONTROL_ODT"] | _DFII["DFII_CONTROL_RESET_N"]])
    # the writes have no answer; a read makes sure the bridge has done them all
    bone.read_words(csr["sdram_dfii_control"], 1)


def check_memory(transport: UartBoneTransport, n: int) -> None:
    """Write and read back a pattern at the start and the end of the NPU's first ``n``
    bytes: an SDRAM that did not come up fails here, not as wrong logits later."""
    import numpy as np
    pat = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    for addr in (0, max(0, n - 64)):
        transport.write_mem(addr, pat)
        got = transport.read_mem(addr, 64)
        if got != pat:
            bad = next(i for i in range(64) if got[i] != pat[i])
            raise UartBoneError(f"SDRAM check at NPU address {addr:#x}: byte {bad} read {got[bad]:#04x}, wrote "
                                f"{pat[bad]:#04x} (the SDRAM did not come up: check the board's SDRAM module)")
