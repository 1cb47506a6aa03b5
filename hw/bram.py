"""A word-wide simple dual-port RAM with an enable per element and two cycles of read
latency: the device's block RAM with its output register where known.

On ECP5 (``platform.family == "ecp5"``) it is a set of ``DP16KD`` blocks with the read
port's output register on (``REGMODE_B = "OUTREG"``): yosys 0.23 maps a memory to the block
without it, so the block's 5.8 ns clock-to-output plus the wire to the next register had to
fit one cycle (the 4 x 4's worst path on its best seed, docs/synthesis.md). Elsewhere
(simulation, other devices, depths past one block) it is the same two registers behind an
inferred memory. The port conventions (address bits per width, byte enables on the low
address bits, 36-bit pseudo-dual-port data on both ports) follow yosys' own ECP5 mapping
(``share/ecp5/brams_map.v``).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WordRAM", "addr_copies_for", "ecp5_tiling"]

#: DP16KD data widths and their depths; 36 is the pseudo-dual-port mode (write A, read B)
_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


@dataclass(frozen=True)
class Tiling:
    """How a ``depth x elems x width`` RAM is cut into DP16KD blocks."""

    mode: int           #: the blocks' data width (36, 18, 9, 4, 2 or 1)
    per_tile: int       #: elements per block (byte modes), else 0
    slices: int         #: blocks per element (bit-slice modes), else 0
    tiles: int          #: blocks in all


def ecp5_tiling(depth: int, elems: int, width: int) -> Tiling | None:
    """The fewest DP16KD blocks for the RAM, or ``None`` past one block's depth.

    Byte modes (36, 18, 9) keep whole elements in 9-bit granules with a write enable each;
    bit-slice modes (4, 2, 1) cut every element over several blocks, each written with its
    element's enable."""
    best = None
    for mode, dmax in _MODES:
        if depth > dmax:
            continue
        if mode >= 9:
            g = -(-width // 9)
            per = (mode // 9) // g
            if per == 0:
                continue
            t = Tiling(mode, per, 0, -(-elems // per))
        else:
            s = -(-width // mode)
            t = Tiling(mode, 0, s, elems * s)
        if best is None or t.tiles < best.tiles:
            best = t
    return best


def addr_copies_for(depth: int, elems: int, width: int) -> int:
    """Register copies of a ``WordRAM``'s write line that keep each near its blocks: one per
    four DP16KD blocks it takes on ECP5 (one where it is not block RAM)."""
    t = ecp5_tiling(depth, elems, width)
    return 1 if t is None else max(1, -(-t.tiles // 4))


class WordRAM(wiring.Component):
    """``depth`` words of ``elems`` elements of ``width`` bits.

    Write: ``wr_en`` (one bit per element), ``wr_addr``, ``wr_data``, taking effect at the
    clock edge. Read: ``rd_data`` is the word at ``rd_addr`` two cycles after ``rd_addr``
    (read register, output register); while ``rd_en`` (high unless driven) is low both
    registers hold, so the word comes out after two cycles with ``rd_en`` high. A read whose
    address comes in the cycle of the word's write is undefined (``no_rw_check``); from the
    next cycle on it gives the new word.
    """

    LATENCY = 2

    def __init__(self, *, depth: int, elems: int, width: int, addr_copies: int = 1):
        for name, v in (("depth", depth), ("elems", elems), ("width", width),
                        ("addr_copies", addr_copies)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WordRAM: {name} = {v!r}: must be a positive integer")
        self.depth, self.elems, self.width = depth, elems, width
        self.addr_copies = addr_copies
        word = data.ArrayLayout(unsigned(width), elems)
        super().__init__({
            "wr_en": In(elems),
            "wr_addr": In(range(depth)),
            # copies of ``wr_addr`` (equal to it in every cycle), each from a register of its
            # own: on ECP5 block ``i`` of ``n`` takes copy ``i * addr_copies // n``, so each
            # register drives a few neighbouring blocks (a 16-block X memory spans ~36
            # columns even when floorplanned); elsewhere unused
            "wr_addr_rep": In(data.ArrayLayout(range(depth), addr_copies)),
            "wr_data": In(word),
            "rd_addr": In(range(depth)),
            "rd_en": In(1, init=1),
            "rd_data": Out(word),
        })

    def elaborate(self, platform):
        m = Module()
        tiling = ecp5_tiling(self.depth, self.elems, self.width)
        if getattr(platform, "family", None) == "ecp5" and tiling is not None:
            self._ecp5(m, tiling)
        else:
            self._generic(m)
        return m

    def _generic(self, m):
        # The read port is asynchronous with its register beside it: yosys 0.23 honours
        # ``no_rw_check`` only where it builds the synchronous port itself.
        mem = memory.Memory(shape=data.ArrayLayout(unsigned(self.width), self.elems),
                            depth=self.depth, init=[], attrs={"no_rw_check": 1})
        m.submodules.mem = mem
        wp = mem.write_port(granularity=1)
        rp = mem.read_port(domain="comb")
        m.d.comb += [wp.en.eq(self.wr_en), wp.addr.eq(self.wr_addr), wp.data.eq(self.wr_data),
                     rp.addr.eq(self.rd_addr)]
        rd = Signal.like(self.rd_data, name="rd_reg")
        with m.If(self.rd_en):
            m.d.sync += [rd.eq(rp.data), self.rd_data.eq(rd)]

    def _ecp5(self, m, t: Tiling):
        mode = t.mode
        lo = {36: 5, 18: 4, 9: 3, 4: 2, 2: 1, 1: 0}[mode]     # address bits below the line
        one, zero = Const(1, 1), Const(0, 1)
        clk = ClockSignal("sync")
        was = [Signal(14, name=f"wr_addr14_{c}") for c in range(self.addr_copies)]
        ra = Signal(14, name="rd_addr14")
        m.d.comb += [*(wa.eq(self.wr_addr_rep[c] << lo) for c, wa in enumerate(was)),
                     ra.eq(self.rd_addr << lo)]
        blocks = []            # (DI bits, DO bits, byte enables or the WE signal)
        if t.per_tile:
            g = -(-self.width // 9)
            for b in range(t.tiles):
                di, do = Signal(36, name=f"di{b}"), Signal(36, name=f"do{b}")
                be = Signal(4, name=f"be{b}")
                for j in range(t.per_tile):
                    e = b * t.per_tile + j
                    if e >= self.elems:
                        break
                    base = 9 * g * j
                    m.d.comb += [di[base:base + self.width].eq(self.wr_data[e]),
                                 self.rd_data[e].eq(do[base:base + self.width])]
                    for k in range(g):
                        m.d.comb += be[g * j + k].eq(self.wr_en[e])
                blocks.append((di, do, be))
        else:
            w = mode
            for e in range(self.elems):
                for s in range(t.slices):
                    di, do = Signal(36, name=f"di{e}_{s}"), Signal(36, name=f"do{e}_{s}")
                    n = min(w, self.width - s * w)
                    m.d.comb += [di[:n].eq(self.wr_data[e][s * w:s * w + n]),
                                 self.rd_data[e][s * w:s * w + n].eq(do[:n])]
                    blocks.append((di, do, self.wr_en[e]))
        for i, (di, do, en) in enumerate(blocks):
            wa = was[i * self.addr_copies // len(blocks)]
            # the read port's address and output registers follow ``rd_en`` (CEB, OCEB;
            # OCEA for the low half's output register in the 36-bit mode); CEA is the write's
            ports = {"i_CLKA": clk, "i_CLKB": clk, "i_CEA": one, "i_CEB": self.rd_en,
                     "i_OCEA": self.rd_en, "i_OCEB": self.rd_en, "i_RSTA": zero, "i_RSTB": zero}
            ports.update({f"i_CS{p}{c}": zero for p in "AB" for c in range(3)})
            ada = [wa[a] for a in range(14)]
            adb = [ra[a] for a in range(14)]
            if mode == 36:              # pseudo dual port: 36 bits in on A and B, out on A and B
                ada[:4] = [en[0], en[1], en[2], en[3]]
                we = one
                ports.update({f"i_DIA{b}": di[b] for b in range(18)})
                ports.update({f"i_DIB{b}": di[18 + b] for b in range(18)})
                ports.update({f"o_DOA{b}": do[b] for b in range(18)})
                ports.update({f"o_DOB{b}": do[18 + b] for b in range(18)})
            else:
                if mode == 18:
                    ada[:2] = [en[0], en[1]]
                    we = en[0] | en[1]
                elif mode == 9:
                    we = en[0]
                else:
                    we = en
                ports.update({f"i_DIA{b}": di[b] if b < mode else zero for b in range(18)})
                ports.update({f"i_DIB{b}": zero for b in range(18)})
                ports.update({f"o_DOB{b}": do[b] for b in range(min(mode, 18))})
            ports["i_WEA"] = we
            ports["i_WEB"] = zero
            ports.update({f"i_ADA{a}": ada[a] for a in range(14)})
            ports.update({f"i_ADB{a}": adb[a] for a in range(14)})
            m.submodules[f"bram{i}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=mode, p_DATA_WIDTH_B=mode,
                # (36-bit mode reads the low half on DOA: its output register too)
                p_REGMODE_A="OUTREG" if mode == 36 else "NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="AUTO",
                **ports)
