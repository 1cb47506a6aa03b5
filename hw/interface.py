"""Layouts and signatures shared by the NPU core, its blocks and its testbenches."""
from __future__ import annotations

from amaranth.hdl import Cat, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import HwConfig

__all__ = ["OUT_RAW", "OUT_REQUANT", "layer_desc_layout", "wr_req_layout",
           "mem_port_signature", "gather_signature", "log2", "load_in_slices"]

OUT_RAW = 0       #: output the accumulator (acc_width bits, stored as 4 bytes)
OUT_REQUANT = 1   #: output requantised, saturated elements (elem_bytes each)

SHIFT_WIDTH = 6


def log2(v: int) -> int:
    return v.bit_length() - 1


def load_in_slices(m, dst, src, enables) -> None:
    """``dst <= src`` (same width), slice ``i`` of the bits while ``enables[i]``.

    For wide registers: each enable (a register copy of its own) drives a slice's worth of
    flip-flops instead of one net driving them all."""
    dst, src = Value.cast(dst), Value.cast(src)
    n = len(enables)
    cut = [len(dst) * i // n for i in range(n + 1)]
    for i, en in enumerate(enables):
        with m.If(en):
            m.d.sync += dst[cut[i]:cut[i + 1]].eq(src[cut[i]:cut[i + 1]])


def register_copies(m, port, value, *, name: str) -> None:
    """Drive each bit of ``port`` from a register of its own (``name<i>``) holding ``value``.

    Register replicas split a high-fanout control net; they must be separate signals: the
    identical bits of one multi-bit register become one flip-flop after synthesis, despite
    the flow's keep step for ``*_rep*`` signals (tests/test_synth.py checks)."""
    regs = [Signal(name=f"{name}{i}") for i in range(len(port))]
    m.d.sync += [r.eq(value) for r in regs]
    m.d.comb += port.eq(Cat(regs))


def layer_desc_layout(cfg: HwConfig) -> data.StructLayout:
    """One GEMM layer O[R x C] = X[R x P] . W[P x C] as the core's command.

    ``rs`` (rows per sample) turns on the X row gather: with ``rs > 0`` the X rows come in
    groups of ``rs``, group ``j`` starting at the address the core's ``gather`` port returns
    for index ``j`` (``x_addr`` is then unused). O is always dense from ``o_addr``.
    """
    return data.StructLayout({
        "r": unsigned(cfg.dim_width),
        "p": unsigned(cfg.dim_width),
        "c": unsigned(cfg.dim_width),
        "x_addr": unsigned(cfg.addr_width),
        "w_addr": unsigned(cfg.addr_width),
        "b_addr": unsigned(cfg.addr_width),
        "o_addr": unsigned(cfg.addr_width),
        "log2_bp": unsigned(max(1, log2(cfg.tp).bit_length())),
        "log2_k": unsigned(max(1, log2(cfg.tc).bit_length())),
        "bias_en": unsigned(1),
        "out_mode": unsigned(1),
        "relu": unsigned(1),
        "mult": signed(cfg.mult_width),
        "shift": unsigned(SHIFT_WIDTH),
        "rs": unsigned(cfg.dim_width),
    })


def wr_req_layout(cfg: HwConfig) -> data.StructLayout:
    return data.StructLayout({
        "addr": unsigned(cfg.addr_width),
        "data": unsigned(8 * cfg.mem_bytes),
        "strb": unsigned(cfg.mem_bytes),
    })


def mem_port_signature(cfg: HwConfig) -> wiring.Signature:
    """The core's side of the memory port: beat reads and strobed beat writes.

    Reads: ``rd_req`` carries a beat-aligned byte address; ``rd_resp`` returns that beat,
    in request order. Writes: ``wr_req`` carries address, data and byte strobes;
    ``wr_resp`` acknowledges each write, in order.
    """
    return wiring.Signature({
        "rd_req": Out(stream.Signature(unsigned(cfg.addr_width))),
        "rd_resp": In(stream.Signature(unsigned(8 * cfg.mem_bytes))),
        "wr_req": Out(stream.Signature(wr_req_layout(cfg))),
        "wr_resp": In(stream.Signature(unsigned(1))),
    })


def gather_signature(cfg: HwConfig) -> wiring.Signature:
    """The core's X row-gather lookup: it drives ``idx``, the table answers ``addr``."""
    return wiring.Signature({
        "idx": Out(unsigned(cfg.dim_width)),
        "addr": In(unsigned(cfg.addr_width)),
    })
