"""The drain: partial-sum accumulation, bias, requantisation and output writes.

The core hands every finished PE-array group (up to ``B_P`` rows x ``F`` columns of sums)
to the drain as one *stage entry* (:func:`stage_layout`). The drain walks the entry in
**beats**, in the order ``for i in range(nrows): for u0 in range(0, ncols, DW)``, where a
beat covers units ``u0 .. min(u0 + DW, ncols) - 1`` of row ``i`` and ``DW = M // ob``
(``ob = 4`` bytes for ``out_mode`` raw, ``elem_bytes`` for requant). A beat of a non-``last``
entry updates the on-chip partial sums (``tr x tc`` accumulators) and writes nothing; a beat
of a ``last`` entry adds the partial sums (unless ``first``) and the bias (if ``bias_en``),
requantises (or not), applies ReLU and emits one strobed ``M``-byte write on ``wr_req``,
bit-exact with :mod:`fluidnpu.hw.reference`.

Timing contract (the cycle model reproduces it):

* ``stall = wr_req.valid & ~wr_req.ready``. While stalled nothing advances: no beat is
  issued, no pipeline register moves, no entry is accepted.
* ``stage.ready = ~stall & (no entry held | the held entry's last beat is issued this
  cycle)``. An entry accepted in cycle ``a`` is held in a register and its beats are issued
  in cycles ``a+1 .. a+n`` (later by the stall cycles), one per cycle, where
  ``n = nrows * ceil(ncols / DW)`` (:meth:`Drain.beats`); beats of non-``last`` entries
  write nothing but take their cycle too. Entries offered back to back are accepted every
  ``n`` cycles, with no bubble between them.
* The write of a beat issued in cycle ``t`` is on ``wr_req`` from cycle
  ``t + Drain.LATENCY`` (later by the stall cycles in between).
* ``idle`` is high when no entry is held and no beat (written or not) is in the pipeline:
  from cycle ``t_last + LATENCY + 1`` after the last issued beat, stalls aside.
* ``stage.ready`` depends combinationally on ``wr_req.ready``; ``wr_req.valid`` does not.
* The ``layer`` fields are sampled when an entry is accepted and travel with its beats.

Entries must have ``1 <= nrows``, ``trow0 + nrows <= tr``, ``1 <= ncols <= F`` and ``c0`` a
multiple of ``F`` (so no beat straddles two memory words), rows and columns inside O.

Pipeline (one register between stages, one global enable ``~stall``):

* ``s0``: beat counters over the held entry; select the value and bias lines; the
  partial-sum line address; lane mask; whether the beat ahead writes the line it reads.
* ``s1``: read the partial sums; ``y = v + partial (unless first) + bias (if last)``
  (carry-save, one carry chain); byte strobes.
* ``s2``: write ``y`` back to the partial sums (non-``last``); ``y * mult`` as two
  DSP-sized partial products (``mult = 1`` in raw mode); ``row * os``.
* ``s3``: ``q = y * mult + 2**(shift-1)``; the write address.
* ``s4``: the upper levels of ``q >> shift``; whether ``q >> shift`` is above or below the
  data range.
* ``s5``: the lower levels of the shift.
* ``s6``: saturate, ReLU (raw: ``q`` itself, no clamp).
* ``s7``: place the lanes in the beat and register the write on ``wr_req``.

The partial-sum buffer is ``E = mem_bytes // elem_bytes`` memories (one per lane) of
``tr * tc / E`` accumulators, line ``trow * tc / E + u // E``. A line is read (asynchronously,
from a registered address) in ``s1`` and written in ``s2``; the beat right behind a write
takes the written lanes from ``s2`` instead of the memory, every later beat reads them
from the memory, which covers the read-after-write distances of the read-modify-write.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .interface import OUT_RAW, layer_desc_layout, log2, wr_req_layout

__all__ = ["stage_layout", "Drain"]


def stage_layout(cfg: HwConfig) -> data.StructLayout:
    """One finished PE-array group: ``vals[i*tc + u]`` is the sum of row ``i``, unit ``u``."""
    return data.StructLayout({
        "vals": data.ArrayLayout(signed(cfg.acc_width), cfg.tp * cfg.tc),
        "bias": data.ArrayLayout(signed(32), cfg.tc),    # read on last entries (bias_en) only
        "row0": unsigned(cfg.dim_width),       # absolute row of segment 0
        "trow0": unsigned(log2(cfg.tr) + 1),   # row within the row tile of segment 0
        "nrows": unsigned(log2(cfg.tp) + 1),   # 1 .. B_P rows present
        "c0": unsigned(cfg.dim_width),         # absolute column of unit 0 (a multiple of F)
        "ncols": unsigned(log2(cfg.tc) + 1),   # 1 .. F columns present
        "first": unsigned(1),                  # first chunk of this (row tile, column tile)
        "last": unsigned(1),                   # last chunk: post-process and write
    })


def _window(m, v, amount, width, name, lowest=0):
    """``v[amount : amount + width]`` as a narrowing log shifter; ``v`` must be wide enough.

    With ``lowest``, only the levels of ``amount``'s bits from ``lowest`` up: the result is
    ``width + 2**lowest - 1`` bits, to be shifted on by ``amount``'s lower bits."""
    for b in reversed(range(lowest, len(amount))):
        need = width + (1 << b) - 1
        nxt = Signal(need, name=f"{name}_{b}")
        m.d.comb += nxt.eq(Mux(amount[b], v[1 << b:(1 << b) + need], v[:need]))
        v = nxt
    return v[:width + (1 << lowest) - 1]


class Drain(wiring.Component):
    """Output unit of the core; see the module docstring for behaviour and timing.

    ``layer`` must be valid whenever an entry is accepted; the fields the drain uses (``c``,
    ``o_addr``, ``out_mode``, ``relu``, ``mult``, ``shift``, ``bias_en``) are captured with
    each entry, so the next layer may be presented once the last entry of a layer has been
    accepted, while its writes are still in flight.
    """

    #: Cycles from the issue of a beat to its write on ``wr_req`` (without stalls).
    LATENCY = 8

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        super().__init__({
            "layer": In(layer_desc_layout(cfg)),
            "stage": In(stream.Signature(stage_layout(cfg))),
            "wr_req": Out(stream.Signature(wr_req_layout(cfg))),
            "idle": Out(1),
        })

    @property
    def latency(self) -> int:
        return self.LATENCY

    @staticmethod
    def beats(cfg: HwConfig, out_mode: int, nrows: int, ncols: int) -> int:
        """Issue cycles an entry of ``nrows x ncols`` takes (for cycle models and tests)."""
        dw = cfg.mem_bytes // (4 if out_mode == OUT_RAW else cfg.elem_bytes)
        return nrows * -(-ncols // dw)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        aw, mw = cfg.acc_width, cfg.mult_width
        M, eb = cfg.mem_bytes, cfg.elem_bytes
        E = cfg.elems_per_beat            # lanes of a line (requant beat width)
        DWR = M // 4                      # units of a raw beat
        lE, leb, lM = log2(E), log2(eb), log2(M)
        lpr = cfg.tc // E                 # partial-sum lines per tile row
        W = aw + mw                       # exact product width
        lane = signed(aw)
        line = data.ArrayLayout(lane, E)

        stall = Signal()
        go = Signal()                     # pipeline enable
        m.d.comb += [stall.eq(self.wr_req.valid & ~self.wr_req.ready), go.eq(~stall)]

        def carry(dst_stage, **sigs):
            """Register ``sigs`` into stage ``dst_stage`` (held while stalled)."""
            out = {}
            for name, sig in sigs.items():
                reg = Signal.like(sig, name=f"{dst_stage}_{name}")
                with m.If(go):
                    m.d.sync += reg.eq(sig)
                out[name] = reg
            return out

        # -- entry register and beat counters (s0) ---------------------------------------------
        e = Signal(stage_layout(cfg), name="s0_entry")
        e_valid = Signal(name="s0_entry_valid")
        e_raw = Signal(name="s0_raw")
        e_relu = Signal(name="s0_relu")
        e_bias_en = Signal(name="s0_bias_en")
        e_mult = Signal(signed(mw), name="s0_mult")
        e_shift = Signal(range(W + 1), name="s0_shift")
        e_os = Signal(cfg.dim_width + 3, name="s0_os")
        e_oaddr = Signal(cfg.addr_width, name="s0_oaddr")
        s0_i = Signal(range(cfg.tp + 1))          # row of the entry
        s0_u0 = Signal(range(cfg.tc + 1))         # first unit of the beat
        s0_rem = Signal(range(cfg.tc + 1))        # units of the row from u0 on
        s0_col = Signal(cfg.dim_width)            # c0 + u0
        s0_row = Signal(cfg.dim_width)            # row0 + i
        s0_trow = Signal(log2(cfg.tr) + 1)        # trow0 + i
        s0_row_end = Signal()                     # the beat ends its row (rem <= DW)
        s0_last_row = Signal()                    # i == nrows - 1
        e_row1 = Signal(name="s0_row1")           # a row is one beat (ncols <= DW)

        # -- s0: issue one beat per cycle ------------------------------------------------------
        # Whether the beat ends its row, is in the last row, is the last: registers, computed
        # one beat ahead, so that stage.ready and the enables are shallow.
        s0_dw = Mux(e_raw, DWR, E)
        s0_last = Signal()
        nxt_row_end = Signal()
        nxt_last_row = Signal()
        with m.If(s0_row_end):
            m.d.comb += [nxt_row_end.eq(e_row1), nxt_last_row.eq(s0_i + 2 >= e.nrows)]
        with m.Else():
            m.d.comb += [nxt_row_end.eq(s0_rem <= 2 * s0_dw), nxt_last_row.eq(s0_last_row)]
        m.d.comb += self.stage.ready.eq(go & (~e_valid | s0_last))
        with m.If(e_valid & go):
            m.d.sync += [s0_row_end.eq(nxt_row_end), s0_last_row.eq(nxt_last_row),
                         s0_last.eq(nxt_row_end & nxt_last_row)]
            with m.If(s0_row_end):
                m.d.sync += [s0_u0.eq(0), s0_rem.eq(e.ncols), s0_col.eq(e.c0), s0_i.eq(s0_i + 1),
                             s0_row.eq(s0_row + 1), s0_trow.eq(s0_trow + 1)]
            with m.Else():
                m.d.sync += [s0_u0.eq(s0_u0 + s0_dw), s0_rem.eq(s0_rem - s0_dw),
                             s0_col.eq(s0_col + s0_dw)]
            with m.If(s0_last):
                m.d.sync += e_valid.eq(0)

        # Accepting an entry (possibly in the cycle of the previous entry's last beat) resets
        # the beat counters and captures the layer fields the entry needs.
        lay, new = self.layer, self.stage.payload
        raw = lay.out_mode == OUT_RAW
        ob_bytes = Mux(raw, lay.c << 2, lay.c << leb)
        row1 = new.ncols <= Mux(raw, DWR, E)
        with m.If(self.stage.valid & self.stage.ready):
            m.d.sync += [
                e.eq(new), e_valid.eq(1),
                s0_i.eq(0), s0_u0.eq(0), s0_rem.eq(new.ncols), s0_col.eq(new.c0),
                s0_row.eq(new.row0), s0_trow.eq(new.trow0),
                s0_row_end.eq(row1), s0_last_row.eq(new.nrows <= 1), e_row1.eq(row1),
                s0_last.eq(row1 & (new.nrows <= 1)),
                e_raw.eq(raw), e_relu.eq(lay.relu), e_bias_en.eq(lay.bias_en),
                e_mult.eq(Mux(raw, 1, lay.mult)),
                e_shift.eq(Mux(raw, 0, Mux(lay.shift > W, W, lay.shift))),
                e_os.eq((ob_bytes + (M - 1)) & ~Const(M - 1, cfg.dim_width + 3)),
                e_oaddr.eq(lay.o_addr),
            ]

        s0_line = s0_u0[lE:lE + log2(lpr)]                 # line within the tile row
        vlines = data.ArrayLayout(line, cfg.tc * cfg.tp // E)(e.vals.as_value())
        blines = data.ArrayLayout(data.ArrayLayout(signed(32), E), lpr)(e.bias.as_value())
        s0_v = vlines[Cat(s0_line, s0_i[:log2(cfg.tp)])]
        s0_b = blines[s0_line]
        s0_colbyte = Mux(e_raw, s0_col << 2, s0_col << leb)

        # Partial sums: read in s1, written back from s2's registers. One memory per lane,
        # read asynchronously in s1 from a per-lane copy of the line address (``_rep``: each
        # copy drives only its lane's LUT RAM). The beat right behind a write reads before
        # the write lands: it takes the written value from s2 instead (``s1_fwd``, decided
        # in s0); every later beat reads it from the memory. So the read-modify-write is
        # not one combinational loop through the memory.
        s0_paddr = Cat(s0_line, s0_trow[:log2(cfg.tr)])
        p_rd, p_wp = [], []
        for l in range(E):
            mem = Memory(shape=lane, depth=cfg.tr * lpr, init=[])
            m.submodules[f"psum{l}"] = mem
            p_wp.append(mem.write_port())
            rp = mem.read_port(domain="comb")
            a_rep = Signal(len(s0_paddr), name=f"s1_paddr_rep{l}")
            with m.If(go):
                m.d.sync += a_rep.eq(s0_paddr)
            m.d.comb += rp.addr.eq(a_rep)
            p_rd.append(rp.data)

        s0_n = Mux(s0_row_end, s0_rem, s0_dw)             # units in the beat
        s0_off = s0_u0[:lE]                               # first lane of the beat in its line
        s0_bias = Signal(line)                             # the bias on the last chunk, or 0
        for l in range(E):
            m.d.comb += s0_bias[l].eq(Mux(e.last & e_bias_en, s0_b[l], 0))

        s1 = carry("s1", valid=e_valid, first=e.first, last=e.last, v=s0_v, bias=s0_bias,
                   waddr=s0_paddr, n=s0_n, off=s0_off,
                   mask=Cat((s0_off <= l) & (l < s0_off + s0_n) for l in range(E)),
                   boff=s0_colbyte[:lM],                   # first byte of the beat in its word
                   colword=s0_colbyte & ~Const(M - 1, cfg.dim_width + 2), row=s0_row,
                   os=e_os, oaddr=e_oaddr, raw=e_raw, relu=e_relu, mult=e_mult, shift=e_shift)

        # Lanes the beat in s1 writes back (a non-last entry) at the line the beat in s0
        # reads: that beat takes them from s2 (see above).
        s1_wr = s1["valid"] & ~s1["last"]
        s1_fwd = Signal(E, name="s1_fwd")
        same_line = s0_paddr == s1["waddr"]
        with m.If(go):
            m.d.sync += s1_fwd.eq(Cat(s1_wr & s1["mask"][l] & same_line for l in range(E)))

        # -- s1: add the partial sums ----------------------------------------------------------
        # y = v + partial + bias through a carry-save stage: one LUT level and one carry chain
        # after the partial-sum read.
        s1_y = Signal(line)
        s2_y = Signal(line, name="s2_y")
        for l in range(E):
            a = s1["v"][l].as_unsigned()
            part = Mux(s1_fwd[l], s2_y[l], p_rd[l])
            b = Mux(s1["first"], 0, part.as_unsigned())
            c = s1["bias"][l].as_unsigned()
            m.d.comb += s1_y[l].eq((a ^ b ^ c) + (((a & b) | (a & c) | (b & c)) << 1))
        with m.If(go):
            m.d.sync += s2_y.eq(s1_y)
        s1_nbytes = Mux(s1["raw"], s1["n"] << 2, s1["n"] << leb)
        s1_strb = Cat((s1["boff"] <= b) & (b < s1["boff"] + s1_nbytes) for b in range(M))

        s2 = carry("s2", busy=s1["valid"], valid=s1["valid"] & s1["last"], strb=s1_strb,
                   wr=s1_wr, waddr=s1["waddr"], mask=s1["mask"],
                   **{f: s1[f] for f in ("row", "colword", "os", "oaddr", "boff", "off", "raw",
                                         "relu", "shift")})
        # write back from s2 (once: held while stalled)
        m.d.comb += [wp.addr.eq(s2["waddr"]) for wp in p_wp]
        m.d.comb += [wp.data.eq(s2_y[l]) for l, wp in enumerate(p_wp)]
        m.d.comb += [wp.en.eq(s2["wr"] & go & s2["mask"][l]) for l, wp in enumerate(p_wp)]

        # -- s2: multiply (lanes and row address) ----------------------------------------------
        # y * mult as two DSP-sized products (y's low L bits unsigned, the rest signed), added
        # in s3, so that each stage holds either a multiplier or an adder.
        # ``mult`` has one register copy per lane (``_rep``), so that no net spans the DSPs
        # of every lane.
        L = 17 if aw > 18 else aw
        s2_plo = Signal(data.ArrayLayout(signed(L + 1 + mw), E))
        s2_phi = Signal(data.ArrayLayout(signed(max(aw - L, 1) + mw), E))   # 0 if aw <= 18
        for l in range(E):
            y = s2_y[l]
            mult = Signal.like(s1["mult"], name=f"s2_mult_rep{l}")
            with m.If(go):
                m.d.sync += mult.eq(s1["mult"])
            if aw > L:
                m.d.comb += [s2_plo[l].eq(y[:L] * mult),
                             s2_phi[l].eq(y[L:].as_signed() * mult)]
            else:
                m.d.comb += s2_plo[l].eq(y * mult)
        s2_rowaddr = Signal(cfg.addr_width)
        m.d.comb += s2_rowaddr.eq(s2["row"] * s2["os"])
        # The rounding constant 2**(shift-1) (0 for shift 0) and the mask of the bits of q at
        # or above shift + data_width - 1 (q >> shift fits data_width bits iff they all equal
        # the sign), decoded here so that s3 and s4 start from registers.
        s2_half = Cat(s2["shift"] == j + 1 for j in range(W))
        s2_high = Cat(s2["shift"] + (cfg.data_width - 1) <= j for j in range(W + 1))
        s3 = carry("s3", plo=s2_plo, phi=s2_phi, rowaddr=s2_rowaddr, half=s2_half, high=s2_high,
                   **{f: s2[f] for f in ("busy", "valid", "colword", "oaddr", "strb", "boff", "off",
                                         "raw", "relu", "shift")})

        # -- s3: y * mult + rounding constant, address sum ------------------------------------
        # Three addends through a carry-save stage: one LUT level and one carry chain.
        s3_q = Signal(data.ArrayLayout(signed(W + 1), E))
        for l in range(E):
            qa = Signal(W + 1, name=f"s3_qa{l}")
            qb = Signal(W + 1, name=f"s3_qb{l}")
            qc = Signal(W + 1, name=f"s3_qc{l}")
            m.d.comb += [qa.eq(s3["phi"][l] << L), qb.eq(s3["plo"][l]), qc.eq(s3["half"])]
            m.d.comb += s3_q[l].eq((qa ^ qb ^ qc) + (((qa & qb) | (qa & qc) | (qb & qc)) << 1))
        s3_addr = Signal(cfg.addr_width)
        m.d.comb += s3_addr.eq(s3["oaddr"] + s3["rowaddr"] + s3["colword"])
        s3_high = s3["high"]
        s4 = carry("s4", q=s3_q, addr=s3_addr, high=s3_high,
                   **{f: s3[f] for f in ("busy", "valid", "strb", "boff", "off", "raw", "relu",
                                         "shift")})

        # -- s4: coarse shift and range test ---------------------------------------------------
        # Requant: the upper levels of the log shifter (q >> the shift's upper bits), and
        # whether q >> shift is above or below what data_width bits hold (two wide
        # reductions); s5 finishes the shift, s6 chooses among them.
        dwid = cfg.data_width
        sw = len(s4["shift"])
        fine_bits = sw // 2                                          # shift bits done in s5
        s4_part = Signal(data.ArrayLayout(unsigned(dwid + (1 << fine_bits) - 1), E))
        s4_neg = Signal(E)
        s4_hi = Signal(E)
        s4_lo = Signal(E)
        pad = dwid + (1 << sw) - 1 - (W + 1)                         # sign bits _window needs
        for l in range(E):
            q = s4["q"][l]
            neg = q[-1]
            m.d.comb += [
                s4_part[l].eq(_window(m, Cat(q, neg.replicate(max(pad, 0))), s4["shift"], dwid,
                                      f"s4_window{l}", lowest=fine_bits)),
                s4_neg[l].eq(neg),
                s4_hi[l].eq(~neg & (q & s4["high"]).any()),
                s4_lo[l].eq(neg & ~(q | ~s4["high"]).all()),
            ]
        s4_raw = Signal(data.ArrayLayout(signed(32), E))
        for l in range(E):
            m.d.comb += s4_raw[l].eq(s4["q"][l])
        s5 = carry("s5", part=s4_part, neg=s4_neg, hi=s4_hi, lo=s4_lo, q=s4_raw,
                   shift=s4["shift"][:fine_bits],
                   **{f: s4[f] for f in ("busy", "valid", "addr", "strb", "boff", "off", "raw",
                                         "relu")})

        # -- s5: fine shift ----------------------------------------------------------------------
        s5_win = Signal(data.ArrayLayout(signed(dwid), E))
        for l in range(E):
            m.d.comb += s5_win[l].eq(_window(m, s5["part"][l], s5["shift"], dwid,
                                             f"s5_window{l}").as_signed())
        s6 = carry("s6", win=s5_win,
                   **{f: s5[f] for f in ("neg", "hi", "lo", "q", "busy", "valid", "addr", "strb",
                                         "boff", "off", "raw", "relu")})

        # -- s6: saturate, ReLU ------------------------------------------------------------------
        # Raw: q itself (mult 1, shift 0). ReLU: 0 for negative q (the sign survives the shift).
        s6_z = Signal(data.ArrayLayout(signed(32), E))
        for l in range(E):
            with m.If(s6["relu"] & s6["neg"][l]):
                m.d.comb += s6_z[l].eq(0)
            with m.Elif(s6["raw"]):
                m.d.comb += s6_z[l].eq(s6["q"][l])
            with m.Elif(s6["hi"][l]):
                m.d.comb += s6_z[l].eq(cfg.data_max)
            with m.Elif(s6["lo"][l]):
                m.d.comb += s6_z[l].eq(cfg.data_min)
            with m.Else():
                m.d.comb += s6_z[l].eq(s6["win"][l])
        s7 = carry("s7", z=s6_z,
                   **{f: s6[f] for f in ("busy", "valid", "addr", "strb", "boff", "off", "raw")})

        # -- s7: place the lanes in the beat ---------------------------------------------------
        # Gather the beat's units at byte 0 (raw: lanes off .. off+DWR-1, 4 bytes each;
        # requant: lanes 0 .. E-1, eb bytes each), then shift them up to byte boff.
        raw_lanes = Cat(s7["z"][l] for l in range(E)).word_select(s7["off"] >> log2(DWR),
                                                                  8 * M)
        req_lanes = Cat(s7["z"][l][:8 * eb] for l in range(E))
        s7_word = Mux(s7["raw"], raw_lanes, req_lanes)
        for b in range(lM):
            nxt = Signal(8 * M, name=f"s7_word_{b}")
            m.d.comb += nxt.eq(Mux(s7["boff"][b], Cat(Const(0, 8 << b), s7_word), s7_word))
            s7_word = nxt
        strb_bits = Cat(b.replicate(8) for b in s7["strb"])
        with m.If(go):
            m.d.sync += [
                self.wr_req.valid.eq(s7["valid"]),
                self.wr_req.payload.addr.eq(s7["addr"]),
                self.wr_req.payload.strb.eq(s7["strb"]),
                self.wr_req.payload.data.eq(s7_word & strb_bits),
            ]

        # Every beat, written or not, counts as in flight until it leaves the last register.
        out_busy = carry("out", busy=s7["busy"])["busy"]
        m.d.comb += self.idle.eq(~(e_valid | s1["valid"] | s2["busy"] | s3["busy"] | s4["busy"]
                                   | s5["busy"] | s6["busy"] | s7["busy"] | out_busy))
        return m
