"""cocotb bench of the whole simulated SoC (:mod:`.soc`). The host's bytes reach UARTBone
(LiteX's Stream2Wishbone bridge) one of two ways: ``uart``, on the SoC's
``serial_rx``/``serial_tx`` pins at bit level (cocotbext-uart's ``UartSource``/``UartSink``
at the SoC's baud rate) through LiteX's UART PHY, as from the ULX3S's USB serial; or
``stream``, on the bridge's byte streams (:class:`StreamSerial`), one byte a cycle at
most. On top of either link runs the code ``fluidnpu board run`` runs on a board, unchanged: :class:`~fluidnpu.board.uartbone.UartBone`,
LiteDRAM's initialisation through the DFI injector (:func:`~fluidnpu.board.uartbone.init_sdram`),
the memory check, :class:`~fluidnpu.board.uartbone.UartBoneTransport` and
:func:`fluidnpu.board.serve.run_on_transport`.

The blocking host code runs in a thread (cocotb's ``bridge``); the simulation advances
only while the host waits for the link (``resume``), so the host thinks in zero
simulated time and every cycle it costs is the UART's.

The run directory (``FLUIDNPU_RUN_DIR``) holds ``setup.pickle`` (the setup, the SoC's info,
the baud rate) and ``regs.py``; the result is ``result.pickle``.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from fluidnpu.board.driver import load_regs
from fluidnpu.board.serve import run_on_transport
from fluidnpu.board.uartbone import UartBone, UartBoneTransport, check_memory, init_sdram


class _CountingLink:
    """pyserial's ``write``/``read`` over a link's ``_write``/``_read`` (blocking calls into
    the simulation), counting the bytes and writes each way (``extra`` of the record)."""

    bytes_out = bytes_in = writes = 0

    def write(self, data) -> int:
        data = bytes(data)
        self._write(data)
        self.bytes_out += len(data)
        self.writes += 1
        return len(data)

    def read(self, n: int) -> bytes:
        out = self._read(n)
        self.bytes_in += len(out)
        return bytes(out)


class StreamSerial(_CountingLink):
    """pyserial's ``write``/``read``/``reset_input_buffer`` on the simulated SoC's byte
    streams (``make_soc(..., sim="stream")``: LiteX's ``RS232PHYModel`` in place of the
    UART PHY): a write hands the bytes to the bridge's sink, one per cycle as it takes
    them (driven after a rising edge, ``ready`` sampled in the ReadOnly phase); a read
    raises the source's ``ready`` and takes bytes until ``n`` came or ``timeout_cycles``
    passed without one (then returns what came). Outside a read ``ready`` is low, so the
    bridge holds an answer rather than drop it."""

    def __init__(self, dut, clk_ns: float, timeout_cycles: int = 20_000):
        self.edge = RisingEdge(dut.sys_clk)
        self.tx_valid, self.tx_data, self.tx_ready = dut.serial_sink_valid, dut.serial_sink_data, dut.serial_sink_ready
        self.rx_valid, self.rx_data, self.rx_ready = (dut.serial_source_valid, dut.serial_source_data,
                                                      dut.serial_source_ready)
        self.tx_valid.value = 0
        self.tx_data.value = 0
        self.rx_ready.value = 0
        self.clk_ns = clk_ns
        self.timeout_ns = timeout_cycles * clk_ns
        self._write = resume(self._awrite)
        self._read = resume(self._aread)
        self.sleep = resume(_asleep)
        self.bytes_out = self.bytes_in = self.writes = 0

    async def _awrite(self, data: bytes) -> None:
        await self.edge
        for b in data:
            self.tx_valid.value = 1
            self.tx_data.value = b
            while True:
                await ReadOnly()
                taken = int(self.tx_ready.value)
                await self.edge
                if taken:
                    break
        self.tx_valid.value = 0

    async def _aread(self, n: int) -> bytes:
        out = bytearray()
        await self.edge
        self.rx_ready.value = 1
        while len(out) < n:
            await ReadOnly()
            if int(self.rx_valid.value):
                out.append(int(self.rx_data.value))
                await self.edge
                continue
            waited = await First(RisingEdge(self.rx_valid), Timer(round(self.timeout_ns), "ns"))
            if isinstance(waited, Timer):
                break
        await self.edge
        self.rx_ready.value = 0
        return bytes(out)

    def reset_input_buffer(self) -> None:
        pass                # nothing is taken from the bridge outside a read

    def cycle(self) -> int:
        return round(get_sim_time("ns") / self.clk_ns)


async def _asleep(seconds: float) -> None:
    if seconds > 0:
        await Timer(max(1, round(seconds * 1e9)), "ns")


class SimSerial(_CountingLink):
    """pyserial's ``write``/``read``/``reset_input_buffer`` on the simulated UART pins: a
    write queues the bytes (cocotbext-uart sends them while the simulation runs); a read
    runs the simulation until ``n`` bytes came back or ``timeout_bytes`` byte times
    passed without all of them (then returns what came, as pyserial does)."""

    def __init__(self, dut, baud: int, clk_ns: float, timeout_bytes: int = 64):
        from cocotbext.uart import UartSink, UartSource     # the board extra's; the stream link needs none
        self.src = UartSource(dut.serial_rx, baud=baud, bits=8, stop_bits=1)
        self.sink = UartSink(dut.serial_tx, baud=baud, bits=8, stop_bits=1)
        for model in (self.src, self.sink):
            model.log.setLevel(logging.WARNING)      # they log every byte at INFO
        self.byte_ns = 10 * 1e9 / baud
        self.clk_ns = clk_ns
        self.timeout_ns = timeout_bytes * self.byte_ns
        self._write = resume(self._awrite)
        self._read = resume(self._aread)
        self.sleep = resume(_asleep)
        self.bytes_out = self.bytes_in = self.writes = 0

    async def _awrite(self, data: bytes) -> None:
        await self.src.write(data)

    async def _aread(self, n: int) -> bytes:
        idle_since = get_sim_time("ns")
        have = self.sink.count()
        while self.sink.count() < n:
            # the line's bytes still queued to the SoC, then the answer's: one wait per gap
            await Timer(max(1, round((self.src.count() + n - self.sink.count()) * self.byte_ns)), "ns")
            if self.sink.count() > have:
                have, idle_since = self.sink.count(), get_sim_time("ns")
            elif self.src.empty() and get_sim_time("ns") - idle_since > self.timeout_ns:
                break
        return self.sink.read_nowait(min(n, self.sink.count()))

    def reset_input_buffer(self) -> None:
        self.sink.clear()

    def cycle(self) -> int:
        return round(get_sim_time("ns") / self.clk_ns)


@cocotb.test()
async def serve(dut):
    run_dir = Path(os.environ["FLUIDNPU_RUN_DIR"])
    S = pickle.loads((run_dir / "setup.pickle").read_bytes())
    s, info, baud, link_kind = S["setup"], S["info"], S["baud"], S["link"]
    clk_ns = 1e3 / info["sys_clk_mhz"]
    Clock(dut.sys_clk, clk_ns, unit="ns").start(start_high=False)
    dut.sim_trace.value = 0
    if link_kind == "uart":
        dut.serial_rx.value = 1          # the line idles high from the start, as on the board
    dut.sys_rst.value = 1
    await ClockCycles(dut.sys_clk, 8)
    dut.sys_rst.value = 0
    await ClockCycles(dut.sys_clk, 8)
    link = SimSerial(dut, baud, clk_ns) if link_kind == "uart" else StreamSerial(dut, clk_ns)
    regs = load_regs(run_dir / "regs.py")
    f = info["sys_clk_mhz"] * 1e6
    marks = {}

    def host():
        # timeout 0: the link's own simulated-time limit decides when an answer is missing
        bone = UartBone(f"simulated SoC ({link_kind})", baud, link=link, timeout=0.0,
                        max_words=None if link_kind == "uart" else 255)
        marks["start"] = link.cycle()
        init_sdram(bone, info["csr"], info["sdram_init"], sleep=link.sleep)
        marks["sdram_up"] = link.cycle()
        transport = UartBoneTransport(bone, csr_base=info["npu_csr_base"],
                                      mem_base=info["main_ram_base"] + info["npu_mem_offset"],
                                      mem_size=info["npu_mem_bytes"])
        check_memory(transport, len(s.mem_image))
        marks["checked"] = link.cycle()
        max_cycles = S["max_cycles"]
        if max_cycles is None:       # the UART host takes thousands of cycles per decision
            max_cycles = int(s.arrival_cycle[-1]) + int(0.05 * f) * (2 + len(s.requests))
        rec = run_on_transport(s, transport, regs, engine=S["engine"], timeout_cycles=int(0.05 * f),
                               max_cycles=max_cycles)
        marks["end"] = link.cycle()
        rec.extra.update(uart_commands=bone.commands, uart_bytes_out=bone.bytes_out, uart_bytes_in=bone.bytes_in,
                         csr_reads=transport.reads, csr_writes=transport.writes, link=link_kind,
                         baud=baud if link_kind == "uart" else None,
                         sim_cycles={k: v - marks["start"] for k, v in marks.items()})
        return rec

    rec = await bridge(host)()
    tmp = run_dir / "result.pickle.tmp"
    tmp.write_bytes(pickle.dumps(rec))
    tmp.replace(run_dir / "result.pickle")
