"""Wishbone B4 for the generated NPU: the bus signature and the memory-port master.

Why Wishbone B4 *pipelined*: it is the bus of the open SoC builders this project targets
(LiteX, whose interconnect is Wishbone; amaranth-soc), it needs no burst logic to stream
(one request per cycle with STB, held off by the slave's STALL), and a pipelined master
reaches a classic slave through a two-gate adapter. LiteX's own Wishbone is the
*classic* flavour (no STALL): docs/bus.md gives the adapter. AXI4 is left for later.

:class:`WishboneMaster` turns the core's memory port (:func:`~.interface.mem_port_signature`:
independent read and write streams) into one Wishbone master:

* addresses are *word* addresses (``byte address >> log2(mem_bytes)``), data
  ``8 * mem_bytes`` bits, byte selects ``SEL`` from the write strobes (all ones on reads);
* reads and writes share the one bus: when both streams offer a request in the same
  cycle a round-robin arbiter alternates between them (each gets every other cycle; a
  stream alone gets every cycle). A request STALLed by the slave keeps the bus (same
  STB, address and data) until it is taken;
* the slave answers (ACK or ERR) in request order, so a FIFO of one bit per request
  outstanding (read or write) routes each answer: read data to a response FIFO
  (``rd_outstanding`` deep; a read is only issued while it has room, so an answer never
  waits), write answers to a counter that drives ``wr_resp``;
* ERR counts as an answer (a read then returns the bus's ``DAT_R``) and raises ``err``
  for one cycle (the CSR slave keeps it as a sticky flag);
* an answer may come in the same cycle as its request is taken (a classic slave behind
  the STALL = !ACK adapter does that).

Cost against the core's two independent channels: read data reach the core one cycle
later (the response FIFO), write answers one cycle later (the counter), and a layer that
reads and writes at once shares one beat per cycle between them (docs/bus.md has the
measured effect).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .interface import log2, mem_port_signature

__all__ = ["wishbone_signature", "WishboneMaster"]


def wishbone_signature(addr_width: int, data_width: int) -> wiring.Signature:
    """A Wishbone B4 pipelined master's side (byte granularity, with STALL and ERR).

    Port names follow LiteX and amaranth-soc: ``adr dat_w dat_r sel cyc stb we ack err
    stall``; in the generated Verilog they are ``<port>__adr`` and so on.
    """
    if data_width % 8:
        raise ValueError(f"wishbone: data_width = {data_width}: must be a multiple of 8")
    return wiring.Signature({
        "adr": Out(addr_width), "dat_w": Out(data_width), "dat_r": In(data_width),
        "sel": Out(data_width // 8), "cyc": Out(1), "stb": Out(1), "we": Out(1),
        "ack": In(1), "err": In(1), "stall": In(1),
    })


class WishboneMaster(wiring.Component):
    """The core's memory port (``mem``, the core drives it) as a Wishbone master (``bus``).

    ``err`` pulses for one cycle when the slave answers with ERR.
    """

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        super().__init__({
            "mem": In(mem_port_signature(cfg)),
            "bus": Out(wishbone_signature(cfg.addr_width - log2(cfg.mem_bytes), 8 * cfg.mem_bytes)),
            "err": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        M = cfg.mem_bytes
        lm = log2(M)
        D = cfg.rd_outstanding               # reads in flight or waiting in the response FIFO
        T = 2 * D                            # requests (reads + writes) on the bus at most
        mem, bus = self.mem, self.bus

        m.submodules.rdq = rdq = fifo.SyncFIFO(width=8 * M, depth=D)
        m.submodules.tagq = tagq = fifo.SyncFIFO(width=1, depth=T)

        rd_used = Signal(range(D + 1), name="wbm_rd_used")
        outst = Signal(range(T + 1), name="wbm_outst")
        wr_acks = Signal(range(T + 1), name="wbm_wr_acks")

        # ---- request side: round-robin between the read and the write stream -----------
        want_rd = mem.rd_req.valid & (rd_used < D) & tagq.w_rdy
        want_wr = mem.wr_req.valid & tagq.w_rdy
        held = Signal(name="wbm_held")          # the last cycle's request was stalled
        held_wr = Signal(name="wbm_held_wr")
        prio_wr = Signal(name="wbm_prio_wr")    # writes win the next tie
        pick_wr = Signal(name="wbm_pick_wr")
        m.d.comb += pick_wr.eq(Mux(held, held_wr, want_wr & (~want_rd | prio_wr)))
        stb = want_rd | want_wr
        fire = stb & ~bus.stall
        wr = mem.wr_req.payload
        m.d.comb += [
            bus.stb.eq(stb), bus.we.eq(pick_wr),
            bus.adr.eq(Mux(pick_wr, wr.addr, mem.rd_req.payload)[lm:]),
            bus.dat_w.eq(wr.data),
            bus.sel.eq(Mux(pick_wr, wr.strb, (1 << M) - 1)),
            bus.cyc.eq(stb | (outst != 0)),
            mem.rd_req.ready.eq(fire & ~pick_wr),
            mem.wr_req.ready.eq(fire & pick_wr),
        ]
        m.d.sync += [held.eq(stb & bus.stall), held_wr.eq(pick_wr)]
        with m.If(fire):
            m.d.sync += prio_wr.eq(~pick_wr)

        # ---- answer side: route each ACK/ERR by the kind of the oldest request ---------
        answer = bus.ack | bus.err
        # an answer with nothing queued belongs to the request taken in this very cycle
        same = answer & ~tagq.r_rdy
        kind_wr = Mux(tagq.r_rdy, tagq.r_data, pick_wr)
        m.d.comb += [
            tagq.w_data.eq(pick_wr), tagq.w_en.eq(fire & ~same),
            tagq.r_en.eq(answer & tagq.r_rdy),
            rdq.w_data.eq(bus.dat_r), rdq.w_en.eq(answer & ~kind_wr),
            self.err.eq(bus.err),
        ]
        m.d.sync += outst.eq(outst + fire - answer)
        rd_pop = mem.rd_resp.valid & mem.rd_resp.ready
        m.d.sync += rd_used.eq(rd_used + (fire & ~pick_wr) - rd_pop)
        m.d.comb += [mem.rd_resp.valid.eq(rdq.r_rdy), mem.rd_resp.payload.eq(rdq.r_data),
                     rdq.r_en.eq(mem.rd_resp.ready)]
        wr_pop = mem.wr_resp.valid & mem.wr_resp.ready
        m.d.sync += wr_acks.eq(wr_acks + (answer & kind_wr) - wr_pop)
        m.d.comb += [mem.wr_resp.valid.eq(wr_acks != 0), mem.wr_resp.payload.eq(0)]
        return m
