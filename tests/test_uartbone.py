"""The UARTBone transport against LiteX's own bridge: ``Stream2Wishbone`` (the gateware
behind UARTBone, from the installed litex) with a Wishbone SRAM behind it, simulated with
migen's simulator at the byte-stream level (no UART bit timing). The transport talks to
it through a serial-port stand-in, so wrong framing (command, length, address units,
byte order) gives wrong data or a timeout here. Needs the ``board`` extra."""
from __future__ import annotations

import queue
import threading

import pytest

pytest.importorskip("migen")
pytest.importorskip("litex")

from fluidnpu.board.uartbone import (CMD_READ, CMD_WRITE, UartBone, UartBoneError, UartBoneTransport,  # noqa: E402
                                     burst_limit, init_sdram)

SRAM_BYTES = 4096


class SimLink:
    """pyserial's ``write``/``read`` on two byte queues the simulation serves. A read gives
    up once the simulation has run ``idle_cycles`` cycles without sending a byte (the
    bridge answers within tens of cycles), however slow the machine is."""

    def __init__(self, idle_cycles=5000):
        self.rx: queue.Queue = queue.Queue()    # bytes from the bridge
        self.tx: queue.Queue = queue.Queue()    # bytes to the bridge
        self.idle_cycles = idle_cycles
        self.cycle = 0                          # advanced by the simulation

    def write(self, data: bytes) -> int:
        for b in data:
            self.tx.put(b)
        return len(data)

    def read(self, n: int) -> bytes:
        out = b""
        start = self.cycle
        while len(out) < n:
            try:
                out += bytes([self.rx.get(timeout=0.05)])
                start = self.cycle
            except queue.Empty:
                if self.cycle - start > self.idle_cycles and self.tx.empty():
                    break
        return out

    def reset_input_buffer(self):
        while not self.rx.empty():
            self.rx.get_nowait()


def run_with_bridge(body, *, sram_init=None):
    """Run ``body(link)`` in a thread while migen simulates Stream2Wishbone + SRAM; returns
    (body's result, the SRAM's words at the end)."""
    from litex.soc.cores.uart import Stream2Wishbone
    from litex.soc.interconnect import wishbone
    from migen import Module
    from migen.sim import run_simulation

    class Dut(Module):
        def __init__(self):
            self.submodules.bridge = Stream2Wishbone(clk_freq=1e6)
            self.submodules.sram = wishbone.SRAM(SRAM_BYTES, bus=self.bridge.wishbone, init=sram_init)

    dut = Dut()
    link = SimLink()
    box, done = {}, threading.Event()

    def worker():
        try:
            box["out"] = body(link)
        except BaseException as e:     # noqa: BLE001 - re-raised below
            box["err"] = e
        finally:
            done.set()

    words = []

    def bench():
        sink, source = dut.bridge.sink, dut.bridge.source
        yield source.ready.eq(1)
        cur = None
        while not done.is_set():
            if cur is None:
                try:
                    cur = link.tx.get_nowait()
                except queue.Empty:
                    cur = None
            yield sink.valid.eq(cur is not None)
            yield sink.data.eq(cur or 0)
            yield
            link.cycle += 1
            if cur is not None and (yield sink.ready):
                cur = None
            if (yield source.valid):
                link.rx.put((yield source.data))
        for i in range(SRAM_BYTES // 4):
            words.append((yield dut.sram.mem[i]))

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    run_simulation(dut, bench())
    th.join()
    if "err" in box:
        raise box["err"]
    return box["out"], words


def test_words_round_trip_and_layout():
    """Writes land at word address / 4 with the first byte sent as the MSB; bursts longer
    than the bone's limit are split; reads give back what was written."""
    data = [0x01020304, 0xA0B0C0D0, 0xDEADBEEF] + list(range(20))

    def body(link):
        bone = UartBone("sim", link=link, max_words=7, timeout=0.1)
        bone.write_words(0x40, data)
        return bone.read_words(0x40, len(data)), bone.commands

    (got, commands), mem = run_with_bridge(body)
    assert got == data
    assert mem[0x40 // 4:0x40 // 4 + len(data)] == data
    assert mem[0x40 // 4 - 1] == 0 and mem[0x40 // 4 + len(data)] == 0
    assert commands == 2 * 4            # 23 words in bursts of 7: 4 writes, 4 reads


def test_transport_csr_and_unaligned_memory():
    """The Transport: CSR offsets at csr_base, memory bytes little-endian in the words at
    mem_base, unaligned spans merged with the bytes around them."""
    init = [0x11223344] * (SRAM_BYTES // 4)

    def body(link):
        t = UartBoneTransport(UartBone("sim", link=link, max_words=16, timeout=0.1), csr_base=0x100,
                              mem_base=0x800, mem_size=0x400, csr_size=0x100)
        t.write32(0x8, 0xCAFEF00D)
        r = t.read32(0x8)
        t.write_mem(3, bytes(range(1, 11)))      # bytes 3..12: partial words at both ends
        return r, t.read_mem(0, 16), t.read_mem(5, 3)

    (r, m16, m3), mem = run_with_bridge(body, sram_init=init)
    assert r == 0xCAFEF00D and mem[(0x100 + 0x8) // 4] == 0xCAFEF00D
    assert m16 == bytes([0x44, 0x33, 0x22, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x33, 0x22, 0x11])
    assert m3 == bytes([3, 4, 5])
    assert mem[0x800 // 4] == 0x01223344 and mem[0x800 // 4 + 3] == 0x1122330A
    assert mem[0x800 // 4 + 4] == 0x11223344


class DeadLink:
    def write(self, data):
        return len(data)

    def read(self, n):
        return b""


def test_errors_name_port_and_what_happened():
    bone = UartBone("/dev/ttyFAKE", link=DeadLink(), timeout=0.05)
    with pytest.raises(UartBoneError, match=r"/dev/ttyFAKE: read of 1 words at 0x30000000: got 0 of 4 bytes"):
        bone.read_words(0x3000_0000, 1)
    with pytest.raises(ValueError, match="word-aligned"):
        bone.read_words(0x3000_0002, 1)
    t = UartBoneTransport(bone, csr_base=0, mem_base=0x4000_0000, mem_size=64)
    with pytest.raises(ValueError, match="outside the NPU's 0x40 bytes"):
        t.read_mem(60, 8)


def test_burst_limit_fits_the_bridge_timer():
    assert burst_limit(1_000_000) == 255
    n = burst_limit(115200)
    assert (6 + 4 * n) * 10 / 115200 <= 0.05 < (6 + 4 * (n + 1)) * 10 / 115200


class RecordingBone:
    def __init__(self):
        self.writes = []

    def write_words(self, addr, words):
        self.writes.append((addr, list(words)))

    def read_words(self, addr, n):
        return [0] * n


def test_sdram_init_replays_litedram_sequence():
    csr = {"sdram_dfii_control": 0x1000, "sdram_dfii_pi0_command": 0x1004, "sdram_dfii_pi0_command_issue": 0x1008,
           "sdram_dfii_pi0_address": 0x100C, "sdram_dfii_pi0_baddress": 0x1010}
    seq = [("Bring CKE high", 0, 0, "DFII_CONTROL_CKE|DFII_CONTROL_ODT|DFII_CONTROL_RESET_N", 20000),
           ("Precharge All", 1024, 0, "DFII_COMMAND_RAS|DFII_COMMAND_WE|DFII_COMMAND_CS", 0)]
    bone, slept = RecordingBone(), []
    init_sdram(bone, csr, seq, sleep=slept.append)
    assert bone.writes == [(0x1000, [0xE]), (0x100C, [1024]), (0x1010, [0]), (0x1004, [0xB]), (0x1008, [1]),
                           (0x1000, [0xF])]
    assert slept == [0.02]
    assert (CMD_WRITE, CMD_READ) == (1, 2)
