"""Thin synthesis tops around :class:`~fluidnpu.hw.core.NPUCore`.

:class:`Harness` is the core with an on-chip RAM on its memory port and a descriptor
fetcher: on a rising edge of ``start`` it reads the layer descriptor from the RAM (the
last beats of it) and hands it to the core, which then runs the layer over the RAM.
Everything the core computes reaches ``checksum`` (a running hash of the written data),
so synthesis keeps the whole datapath; the descriptor comes from a *writable* RAM, so no
descriptor field (dimensions, policy, output mode) is a constant that synthesis could
fold into the core.

The RAM's initial contents are a real layer (:func:`demo_image`): on a board, pressing
the button runs it and the LEDs show the checksum of the results.

:class:`BoardTop` puts a :class:`Harness` on an amaranth-boards platform: one button
starts, LED 0 shows ``busy``, the other LEDs a fold of the checksum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.build import ResourceError
from amaranth.lib import io, memory, wiring
from amaranth.lib.wiring import In, Out

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.core import NPUCore
from fluidnpu.hw.interface import layer_desc_layout, log2
from fluidnpu.hw.layout import GemmImage, gemm_image

__all__ = ["DemoImage", "demo_image", "Harness", "BoardTop", "fold"]

#: Default on-chip RAM size of the harness, bytes.
DEFAULT_RAM_BYTES = 4096


@dataclass(frozen=True, eq=False)
class DemoImage:
    """The harness RAM's initial contents: a layer and its descriptor."""

    words: tuple[int, ...]   #: RAM lines, ``mem_bytes`` bytes each, little-endian
    desc_line: int           #: first line of the descriptor
    desc_beats: int          #: lines the descriptor takes
    layer: GemmImage         #: the demo layer's layout (``layer.read_out`` reads O back)
    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray

    @property
    def dims(self) -> tuple[int, int, int]:
        return (self.layer.R, self.layer.P, self.layer.C)


def _desc_beats(cfg: HwConfig) -> int:
    return -(-layer_desc_layout(cfg).size // (8 * cfg.mem_bytes))


def demo_image(cfg: HwConfig, ram_bytes: int = DEFAULT_RAM_BYTES, seed: int = 1) -> DemoImage:
    """A small raw-output GEMM with bias laid out in ``ram_bytes`` bytes.

    The layer is as large as fits (``R = tr``, ``C = tc``, ``P`` up to 64) so that a real
    run on a board exercises every PE; the descriptor takes the RAM's last lines.
    """
    M = cfg.mem_bytes
    if ram_bytes % M or ram_bytes & (ram_bytes - 1):
        raise ValueError(f"ram_bytes = {ram_bytes}: must be a power of two and a multiple of "
                         f"mem_bytes = {M}")
    nd = _desc_beats(cfg)
    budget = ram_bytes - nd * M
    rng = np.random.default_rng(seed)
    dmax = (1 << cfg.dim_width) - 1
    R, C = min(cfg.tr, dmax), min(cfg.tc, dmax)
    for P in (64, 32, 16, 8, 4, 2, 1):
        P = min(P, dmax)
        x = rng.integers(cfg.data_min, cfg.data_max + 1, size=(R, P))
        w = rng.integers(cfg.data_min, cfg.data_max + 1, size=(P, C))
        b = rng.integers(-1000, 1000, size=C)
        img = gemm_image(cfg, x, w, b, seed=seed)
        if img.size <= budget and img.size <= (1 << cfg.addr_width):
            break
    else:
        raise ValueError(f"ram_bytes = {ram_bytes}: too small for a demo layer")
    lines = ram_bytes // M
    mem = np.zeros(ram_bytes, dtype=np.uint8)
    mem[:img.size] = img.mem
    desc = img.desc()
    base = (lines - nd) * M
    mem[base:base + nd * M] = np.frombuffer(desc.to_bytes(nd * M, "little"), dtype=np.uint8)
    words = tuple(int.from_bytes(mem[i * M:(i + 1) * M].tobytes(), "little") for i in range(lines))
    return DemoImage(words=words, desc_line=lines - nd, desc_beats=nd, layer=img,
                     x=x, w=w, bias=b)


def fold(m: Module, value, width: int):
    """XOR-fold ``value`` down to ``width`` bits (a combinational expression)."""
    out = value[:width]
    for i in range(width, len(value), width):
        out = out ^ value[i:i + width]
    return out


class Harness(wiring.Component):
    """The core, an on-chip RAM on its memory port, a descriptor fetcher and a checksum.

    The RAM (``ram_bytes`` bytes, ``mem_bytes`` per line, byte-writable) answers a read
    three cycles after it is accepted and acknowledges a write two cycles after it is
    taken, registered on both sides of the block RAM (:meth:`_read_pipeline`); addresses
    wrap modulo the RAM size. (The harness is a synthesis and board top, not the memory
    the cycle model describes: that is the simulation's ``MemTiming``.)
    """

    def __init__(self, cfg: HwConfig, *, ram_bytes: int = DEFAULT_RAM_BYTES):
        self.cfg = cfg
        self.image = demo_image(cfg, ram_bytes)
        self.ram_bytes = ram_bytes
        M = cfg.mem_bytes
        #: the RAM (a testbench reads ``ram.data[line]``)
        self.ram = memory.Memory(shape=unsigned(8 * M), depth=ram_bytes // M,
                                 init=list(self.image.words))
        self.core = NPUCore(cfg)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "checksum": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, img = self.cfg, self.image
        M = cfg.mem_bytes

        m.submodules.core = core = self.core
        m.submodules.ram = ram = self.ram
        rp = ram.read_port()
        wp = ram.write_port(granularity=8)

        # -- descriptor fetch: start edge -> read desc_beats lines -> cmd ------------------
        dl = layer_desc_layout(cfg)
        nd = img.desc_beats
        desc = Signal(8 * M * nd, name="desc")
        start_q = Signal(2, name="start_sync")
        start_prev = Signal(name="start_prev")
        m.d.sync += [start_q.eq(Cat(self.start, start_q[0])), start_prev.eq(start_q[1])]
        fetching = Signal(name="fetching")
        f_issue = Signal(range(nd + 1), name="f_issue")
        f_recv = Signal(range(nd + 1), name="f_recv")

        rd = self._read_pipeline(m, rp, fetching=fetching,
                                 fetch_addr=img.desc_line + f_issue,
                                 fetch_want=fetching & (f_issue < nd))

        with m.FSM(name="fetch_fsm") as fsm:
            with m.State("IDLE"):
                with m.If(start_q[1] & ~start_prev & ~core.busy):
                    m.d.sync += [fetching.eq(1), f_issue.eq(0), f_recv.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(rd["fetch_issue"]):
                    m.d.sync += f_issue.eq(f_issue + 1)
                with m.If(rd["fetch_valid"]):
                    m.d.sync += [desc.eq(Cat(desc[8 * M:], rd["data"])), f_recv.eq(f_recv + 1)]
                    with m.If(f_recv == nd - 1):
                        m.d.sync += fetching.eq(0)
                        m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += core.cmd.valid.eq(1)
                with m.If(core.cmd.ready):
                    m.next = "IDLE"
        m.d.comb += core.cmd.payload.eq(desc[:dl.size])

        w_valid, w_addr, w_data, w_strb, w_take = self._write_pipeline(m, wp)

        # -- checksum of everything written (from the write stage's registers) ---------------
        mask = Cat(*[Mux(w_strb[b], 0xFF, 0) for b in range(M)])
        wdata = Signal(8 * M, name="wr_masked")
        m.d.comb += wdata.eq(w_data & mask)
        csum = Signal(32, name="csum")
        folded = fold(m, Cat(wdata, w_addr), 32)
        with m.If(w_valid & w_take):
            m.d.sync += csum.eq(Cat(csum[31], csum[:31]) ^ folded)
        m.d.comb += [self.checksum.eq(csum), self.busy.eq(core.busy | ~fsm.ongoing("IDLE"))]
        return m


    def _read_pipeline(self, m, rp, *, fetching, fetch_addr, fetch_want):
        """The RAM's read side: request register (``rq_``), block RAM (``rr_``), output
        register (``ro_``); three cycles from an accepted request to its response.

        The registers on both sides of the block keep its 5.8 ns clock-to-output and the
        wire to its site out of the core's paths (both were the worst paths of the 4 x 4 on
        1730179, docs/synthesis.md). The stages move together (``ram_adv``) unless a core
        response waits; while ``fetching``, the descriptor fetcher owns the requests and
        its responses, tagged ``*_fetch``, never reach the core.
        """
        cfg = self.cfg
        mem = self.core.mem
        lm, ll = log2(cfg.mem_bytes), log2(len(self.image.words))
        adv = Signal(name="ram_adv")
        rq_valid, rq_fetch = Signal(name="rq_valid"), Signal(name="rq_fetch")
        rq_addr = Signal(ll, name="rq_addr")
        rr_valid, rr_fetch = Signal(name="rr_valid"), Signal(name="rr_fetch")
        ro_valid, ro_fetch = Signal(name="ro_valid"), Signal(name="ro_fetch")
        ro_data = Signal(8 * cfg.mem_bytes, name="ro_data")
        accept = Signal(name="ram_accept")
        issue = Signal(name="fetch_issue")
        m.d.comb += [
            adv.eq(~ro_valid | ro_fetch | mem.rd_resp.ready),
            mem.rd_req.ready.eq(~fetching & adv),
            accept.eq(mem.rd_req.valid & mem.rd_req.ready),
            issue.eq(fetch_want & adv),
            rp.addr.eq(rq_addr),
            rp.en.eq(adv & rq_valid),
            mem.rd_resp.valid.eq(ro_valid & ~ro_fetch),
            mem.rd_resp.payload.eq(ro_data),
        ]
        with m.If(adv):
            m.d.sync += [
                rq_valid.eq(accept | issue), rq_fetch.eq(fetching),
                rq_addr.eq(Mux(fetching, fetch_addr, (mem.rd_req.payload >> lm)[:ll])),
                rr_valid.eq(rq_valid), rr_fetch.eq(rq_fetch),
                ro_valid.eq(rr_valid), ro_fetch.eq(rr_fetch), ro_data.eq(rp.data),
            ]
        return {"fetch_issue": issue, "fetch_valid": ro_valid & ro_fetch, "data": ro_data}

    def _write_pipeline(self, m, wp):
        """The RAM's write side: the request is registered (``w_``), written the next cycle
        and acknowledged the cycle after; returns the write stage's registers and its
        advance (a write is done when ``w_valid & w_take``)."""
        cfg = self.cfg
        mem = self.core.mem
        M = cfg.mem_bytes
        lm, ll = log2(M), log2(len(self.image.words))
        wack = Signal(name="ram_wack")
        take = Signal(name="w_take")
        w_valid = Signal(name="w_valid")
        w_addr = Signal.like(mem.wr_req.payload.addr, name="w_addr")
        w_data = Signal(8 * M, name="w_data")
        w_strb = Signal(M, name="w_strb")
        m.d.comb += [
            take.eq(~wack | mem.wr_resp.ready),
            mem.wr_req.ready.eq(take),
            mem.wr_resp.valid.eq(wack),
            mem.wr_resp.payload.eq(0),
            wp.addr.eq((w_addr >> lm)[:ll]),
            wp.data.eq(w_data),
            wp.en.eq(Mux(w_valid & take, w_strb, 0)),
        ]
        with m.If(take):
            m.d.sync += [
                w_valid.eq(mem.wr_req.valid), w_addr.eq(mem.wr_req.payload.addr),
                w_data.eq(mem.wr_req.payload.data), w_strb.eq(mem.wr_req.payload.strb),
                wack.eq(w_valid),
            ]
        return w_valid, w_addr, w_data, w_strb, take


class BoardTop(Elaboratable):
    """A :class:`Harness` on a board: ``button`` 0 starts, LED 0 is busy, the rest the checksum."""

    def __init__(self, cfg: HwConfig, *, ram_bytes: int = DEFAULT_RAM_BYTES,
                 button: str = "button", max_leds: int = 8):
        self.cfg = cfg
        self.ram_bytes = ram_bytes
        self.button = button
        self.max_leds = max_leds

    def elaborate(self, platform):
        m = Module()
        m.submodules.harness = h = Harness(self.cfg, ram_bytes=self.ram_bytes)
        m.submodules.button = btn = io.Buffer("i", platform.request(self.button, 0, dir="-"))
        m.d.comb += h.start.eq(btn.i)
        leds = []
        for i in range(self.max_leds):
            try:
                port = platform.request("led", i, dir="-")
            except ResourceError:       # the board has fewer LEDs
                break
            m.submodules[f"led{i}"] = buf = io.Buffer("o", port)
            leds.append(buf)
        if not leds:
            raise ValueError("board has no 'led' resource")
        m.d.comb += leds[0].o.eq(h.busy)
        if len(leds) > 1:
            bits = fold(m, h.checksum, len(leds) - 1)
            m.d.comb += [led.o.eq(bits[i]) for i, led in enumerate(leds[1:])]
        return m
