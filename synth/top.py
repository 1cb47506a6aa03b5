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
    one cycle after it is accepted and acknowledges a write one cycle after it is taken;
    addresses wrap modulo the RAM size.
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
        lines = len(img.words)
        lm, ll = log2(M), log2(lines)

        m.submodules.core = core = self.core
        m.submodules.ram = ram = self.ram
        rp = ram.read_port()
        wp = ram.write_port(granularity=8)
        mem = core.mem

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
        f_pend = Signal(name="f_pend")

        # -- RAM read port: one request per cycle, data one cycle later ----------------------
        rvalid = Signal(name="ram_rvalid")
        accept = Signal(name="ram_accept")
        core_idx = (mem.rd_req.payload >> lm)[:ll]
        m.d.comb += [
            mem.rd_req.ready.eq(~fetching & (~rvalid | mem.rd_resp.ready)),
            accept.eq(mem.rd_req.valid & mem.rd_req.ready),
            mem.rd_resp.valid.eq(rvalid),
            mem.rd_resp.payload.eq(rp.data),
        ]
        with m.If(fetching):
            m.d.comb += [rp.addr.eq(img.desc_line + f_issue), rp.en.eq(f_issue < nd)]
        with m.Else():
            m.d.comb += [rp.addr.eq(core_idx), rp.en.eq(accept)]
        with m.If(accept):
            m.d.sync += rvalid.eq(1)
        with m.Elif(mem.rd_resp.ready):
            m.d.sync += rvalid.eq(0)

        with m.FSM(name="fetch_fsm") as fsm:
            with m.State("IDLE"):
                with m.If(start_q[1] & ~start_prev & ~core.busy):
                    m.d.sync += [fetching.eq(1), f_issue.eq(0), f_recv.eq(0), f_pend.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(f_issue < nd):
                    m.d.sync += f_issue.eq(f_issue + 1)
                m.d.sync += f_pend.eq(f_issue < nd)
                with m.If(f_pend):
                    m.d.sync += [desc.eq(Cat(desc[8 * M:], rp.data)), f_recv.eq(f_recv + 1)]
                    with m.If(f_recv == nd - 1):
                        m.d.sync += fetching.eq(0)
                        m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += core.cmd.valid.eq(1)
                with m.If(core.cmd.ready):
                    m.next = "IDLE"
        m.d.comb += core.cmd.payload.eq(desc[:dl.size])

        # -- RAM write port: strobed writes, acknowledged one cycle later ------------------
        wack = Signal(name="ram_wack")
        m.d.comb += [
            mem.wr_req.ready.eq(~wack | mem.wr_resp.ready),
            mem.wr_resp.valid.eq(wack),
            mem.wr_resp.payload.eq(0),
        ]
        wfire = mem.wr_req.valid & mem.wr_req.ready
        m.d.comb += [
            wp.addr.eq((mem.wr_req.payload.addr >> lm)[:ll]),
            wp.data.eq(mem.wr_req.payload.data),
            wp.en.eq(Mux(wfire, mem.wr_req.payload.strb, 0)),
        ]
        with m.If(wfire):
            m.d.sync += wack.eq(1)
        with m.Elif(mem.wr_resp.ready):
            m.d.sync += wack.eq(0)

        # -- checksum of everything written -------------------------------------------------
        mask = Cat(*[Mux(mem.wr_req.payload.strb[b], 0xFF, 0) for b in range(M)])
        wdata = Signal(8 * M, name="wr_masked")
        m.d.comb += wdata.eq(mem.wr_req.payload.data & mask)
        csum = Signal(32, name="csum")
        folded = fold(m, Cat(wdata, mem.wr_req.payload.addr), 32)
        with m.If(wfire):
            m.d.sync += csum.eq(Cat(csum[31], csum[:31]) ^ folded)
        m.d.comb += [self.checksum.eq(csum), self.busy.eq(core.busy | ~fsm.ongoing("IDLE"))]
        return m


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
