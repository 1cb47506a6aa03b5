"""The drain: partial-sum accumulation, bias, requantisation and output writes.

The core hands every finished PE-array group (up to ``B_P`` rows x ``F`` columns of sums)
to the drain as one *stage entry* (:func:`stage_layout`) through the row stage
(:class:`~.row_stage.RowStage`): the drain pops the entry's small fields
(:func:`head_layout`) and its slot from the row stage's head FIFO (``stage``) and reads its
rows and bias from the row stage's block RAMs (``rd_*``, ``bias_*``). It walks the entry in
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
  cycle)``. An entry accepted in cycle ``a`` is held (its fields in a register, its sums
  in the row stage, which keeps the slot until ``stage_entries`` more entries came) and
  its beats are issued
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

* ``s0``: beat counters over the held entry; the beat's row address in the row stage
  (``slot * tp + i``; ``rd_en = ~stall``).
* ``r1``, ``r2``: the row stage reads the row and the bias (read and output registers);
  in ``r2`` select the value and bias lines; read the partial-sum line; lane mask;
  whether the beats ahead write the line it reads.
* ``s1``: ``y = v + partial (unless first) + bias (if last)`` (carry-save, one carry
  chain); byte strobes.
* ``s1``/``s2`` also hold ``row`` and ``os / M`` in a multiplier's input registers and
  ``row * os / M`` in its product register.
* ``s2``: write ``y`` back to the partial sums (non-``last``).
* ``s3``: the multipliers hold ``y`` and ``mult`` in their input registers (``mult = 1`` in
  raw mode) and multiply; the write address.
* ``s4``: ``q = y * mult + 2**(shift-1)``.
* ``s5``: the upper levels of ``q >> shift``; whether ``q >> shift`` is above or below the
  data range, per group of 8 bits.
* ``s6``: the lower levels of the shift; the range test over the groups.
* ``s7``: saturate, ReLU (raw: ``q`` itself, no clamp).
* ``s8``: gather the beat's lanes at byte 0.
* ``s9``: shift them to their bytes in the beat; register the write on ``wr_req``.

The partial-sum buffer is ``E = mem_bytes // elem_bytes`` memories (one per lane) of
``tr * tc / E`` accumulators, line ``trow * tc / E + u // E``. A line is read (asynchronously,
from per-lane registers of the beat's line) in ``r2``, registered, and written back from ``s2``; the
two beats right behind a write read before it lands and take the written lanes from
``s2``'s (distance 1) or ``s3``'s (distance 2) copy of ``y`` instead, every later beat reads
them from the memory, which covers the read-after-write distances of the
read-modify-write.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .dsp import Multiplier
from .row_stage import RowStage
from .interface import OUT_RAW, layer_desc_layout, log2, wr_req_layout

__all__ = ["stage_layout", "Drain"]


def head_layout(cfg: HwConfig) -> data.StructLayout:
    """A stage entry's small fields (its sums and bias are in the row stage's memories)."""
    return data.StructLayout({
        "row0": unsigned(cfg.dim_width),       # absolute row of segment 0
        "trow0": unsigned(log2(cfg.tr_max) + 1),   # row within the row tile of segment 0
        "nrows": unsigned(log2(cfg.tp) + 1),   # 1 .. B_P rows present
        "c0": unsigned(cfg.dim_width),         # absolute column of unit 0 (a multiple of F)
        "ncols": unsigned(log2(cfg.tc) + 1),   # 1 .. F columns present
        "first": unsigned(1),                  # first chunk of this (row tile, column tile)
        "last": unsigned(1),                   # last chunk: post-process and write
        # The entry's beat counts, stored by its writer (Drain.entry_beats) so that the
        # drain's accept reads them as bits instead of deriving them from the FIFO's output
        "nb_m1": unsigned(max(1, log2(cfg.tc))),             # beats per row - 1
        "row1": unsigned(1),                   # a row is one beat
        "row2": unsigned(1),                   # a row is at most two beats
        "last1": unsigned(1),                  # the entry is one beat
        "last2": unsigned(1),                  # the entry is two beats
    })


def stage_layout(cfg: HwConfig) -> data.StructLayout:
    """One finished PE-array group as the row stage takes it: ``vals[i*tc + u]`` is the sum
    of row ``i``, unit ``u``; the bias is read on last entries (bias_en) only."""
    return data.StructLayout({
        "vals": data.ArrayLayout(signed(cfg.acc_width), cfg.tp * cfg.tc),
        "bias": data.ArrayLayout(signed(32), cfg.tc),
        **{n: f.shape for n, f in head_layout(cfg)},
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

    #: Cycles from the issue of a beat to its write on ``wr_req`` (without stalls): the
    #: row stage's two read cycles (``r1``, ``r2``), then ``s1`` .. ``s9`` and the output.
    LATENCY = 10 + RowStage.LATENCY

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        lane = signed(cfg.acc_width)
        slots = RowStage.slots(cfg)
        super().__init__({
            "layer": In(layer_desc_layout(cfg)),
            # the entry's small fields and its slot in the row stage (RowStage.r_*)
            "stage": In(stream.Signature(RowStage.out_layout(cfg, head_layout(cfg)))),
            # the row stage's read ports: the beat's row (``slot * tp + row``) and the slot's
            # bias, read two enabled cycles ahead of their use (``rd_en`` is ``~stall``)
            "rd_en": Out(1),
            "rd_addr": Out(range(slots * cfg.tp)),
            "rd_data": In(data.ArrayLayout(lane, cfg.tc)),
            "bias_addr": Out(range(slots)),
            "bias_data": In(data.ArrayLayout(signed(32), cfg.tc)),
            "wr_req": Out(stream.Signature(wr_req_layout(cfg))),
            "idle": Out(1),
        })

    @property
    def latency(self) -> int:
        return self.LATENCY

    @staticmethod
    def entry_beats(cfg: HwConfig, layer, nrows, ncols) -> dict:
        """The beat fields of a stage entry (``nb_m1`` ... ``last2``), as values for its
        writer to store with it. The drain's accept reads them as stored bits: derived from
        the FIFO's output and ``layer`` at the accept, they were the 8 x 4's worst path.
        Compares only (no product of rows and beats: its adders were the next worst path,
        into the stage FIFO's write data)."""
        raw = layer.out_mode == OUT_RAW
        dwr, dwe = cfg.mem_bytes // 4, cfg.elems_per_beat
        n1 = ncols - 1
        nb_m1 = Mux(raw, n1 >> log2(dwr), n1 >> log2(dwe))
        row1 = Mux(raw, ncols <= dwr, ncols <= dwe)
        row2 = Mux(raw, ncols <= 2 * dwr, ncols <= 2 * dwe)
        return dict(nb_m1=nb_m1, row1=row1, row2=row2, last1=row1 & (nrows == 1),
                    last2=(row1 & (nrows == 2)) | (row2 & ~row1 & (nrows == 1)))

    @staticmethod
    def entry_beats_ints(cfg: HwConfig, out_mode: int, nrows: int, ncols: int) -> dict:
        """:meth:`entry_beats` for Python ints (testbenches that write entries)."""
        nb = Drain.beats(cfg, out_mode, 1, ncols)
        beats = nrows * nb
        return dict(nb_m1=nb - 1, row1=int(nb == 1), row2=int(nb <= 2),
                    last1=int(beats == 1), last2=int(beats == 2))

    @staticmethod
    def beats(cfg: HwConfig, out_mode: int, nrows: int, ncols: int) -> int:
        """Issue cycles an entry of ``nrows x ncols`` takes (for cycle models and tests)."""
        dw = cfg.mem_bytes // (4 if out_mode == OUT_RAW else cfg.elem_bytes)
        return nrows * -(-ncols // dw)

    @staticmethod
    def _beats_ahead(rb, rl, nb_m1, e1, row_end) -> tuple:
        """The beat counters' next values as a beat is issued, ``(e1', f1', rb', rl')``: the
        beat after the next ends its row (``e1'``) and is the last if it also ends the last
        row (the rows left after it: ``rl - row_end - e1 == 0``); ``rb`` counts the row's
        beats down from ``nb_m1``, ``rl`` the entry's rows."""
        e1_nxt = Mux(rb == 0, nb_m1 <= 1, Mux(rb == 1, nb_m1 == 0, rb == 2))
        return (e1_nxt, e1_nxt & (rl == row_end + e1), Mux(rb == 0, nb_m1, rb - 1),
                rl - row_end)

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

        # -- s0: the entry's fields and the beat counters --------------------------------------
        # The entry's sums and bias stay in the row stage's block RAMs (hw/row_stage.py). A
        # beat presents its row's address there in s0; the row comes out two cycles later,
        # in r2, where the line select and the partial-sum read happen. (Until 6 Dec 2026
        # the drain held the whole entry in a row shift register loaded from a LUT-RAM FIFO:
        # 4,096 flip-flops and their multiplexers on the 16 x 8, beside 1,563 LUT RAMs.)
        e = Signal(head_layout(cfg), name="s0_entry")
        e_slot = Signal(range(RowStage.slots(cfg)), name="s0_slot")
        e_valid = Signal(name="s0_entry_valid")
        e_raw = Signal(name="s0_raw")
        e_relu = Signal(name="s0_relu")
        e_addb = Signal(name="s0_add_bias")              # last & bias_en
        e_mult = Signal(signed(mw), name="s0_mult")
        e_shift = Signal(range(W + 1), name="s0_shift")
        e_os = Signal(cfg.dim_width + 3, name="s0_os")
        e_oaddr = Signal(cfg.addr_width, name="s0_oaddr")
        s0_u0 = Signal(range(cfg.tc + 1), name="s0_u0")      # first unit of the beat
        s0_rem = Signal(range(cfg.tc + 1), name="s0_rem")    # units of the row from u0 on
        s0_col = Signal(cfg.dim_width, name="s0_col")        # c0 + u0
        s0_row = Signal(cfg.dim_width, name="s0_row")        # row0 + i
        s0_trow = Signal(log2(cfg.tr_max) + 1, name="s0_trow")   # trow0 + i
        s0_ri = Signal(max(1, log2(cfg.tp)), name="s0_ri")   # i, the row within the entry
        s0_row_end = Signal(name="s0_row_end")    # the beat ends its row (rem <= DW)
        s0_last = Signal(name="s0_last")          # the beat is the entry's last
        s0_rb = Signal.like(e.nb_m1, name="s0_rb")           # beats of the row after this one
        s0_rl = Signal.like(e.nrows, name="s0_rl")           # rows of the entry after this one
        s0_e1 = Signal(name="s0_e1")              # s0_row_end after the next beat
        s0_f1 = Signal(name="s0_f1")              # s0_last after the next beat

        # Whether the beat ends its row and whether it is the last are registers, and so are
        # their values for the next beat (``s0_e1``, ``s0_f1``, from the beat counters two
        # beats ahead), so stage.ready is shallow.
        s0_dw = Mux(e_raw, DWR, E)
        m.d.comb += self.stage.ready.eq(go & (~e_valid | s0_last))
        with m.If(e_valid & go):
            e1n, f1n, rbn, rln = self._beats_ahead(s0_rb, s0_rl, e.nb_m1, s0_e1, s0_row_end)
            m.d.sync += [s0_row_end.eq(s0_e1), s0_last.eq(s0_f1), s0_e1.eq(e1n), s0_f1.eq(f1n),
                         s0_rb.eq(rbn), s0_rl.eq(rln)]
            with m.If(s0_row_end):
                m.d.sync += [s0_u0.eq(0), s0_rem.eq(e.ncols), s0_col.eq(e.c0),
                             s0_row.eq(s0_row + 1), s0_trow.eq(s0_trow + 1),
                             s0_ri.eq(s0_ri + 1)]
            with m.Else():
                m.d.sync += [s0_u0.eq(s0_u0 + s0_dw), s0_rem.eq(s0_rem - s0_dw),
                             s0_col.eq(s0_col + s0_dw)]
            with m.If(s0_last):
                m.d.sync += e_valid.eq(0)

        # Accepting an entry (possibly in the cycle of the previous entry's last beat) resets
        # the beat counters and captures the layer fields the entry needs.
        lay, new = self.layer, self.stage.payload.head
        raw = lay.out_mode == OUT_RAW
        ob_bytes = Mux(raw, lay.c << 2, lay.c << leb)
        with m.If(self.stage.valid & self.stage.ready):
            m.d.sync += [
                e.eq(new), e_slot.eq(self.stage.payload.slot), e_valid.eq(1),
                s0_u0.eq(0), s0_rem.eq(new.ncols), s0_col.eq(new.c0),
                s0_row.eq(new.row0), s0_trow.eq(new.trow0), s0_ri.eq(0),
                s0_row_end.eq(new.row1), s0_last.eq(new.last1), s0_e1.eq(new.row2),
                s0_f1.eq(new.last2), s0_rb.eq(new.nb_m1), s0_rl.eq(new.nrows - 1),
                e_raw.eq(raw), e_relu.eq(lay.relu), e_addb.eq(new.last & lay.bias_en),
                e_mult.eq(Mux(raw, 1, lay.mult)),
                e_shift.eq(Mux(raw, 0, Mux(lay.shift > W, W, lay.shift))),
                e_os.eq((ob_bytes + (M - 1)) & ~Const(M - 1, cfg.dim_width + 3)),
                e_oaddr.eq(lay.o_addr),
            ]

        # The beat's row and bias in the row stage, read while the beat passes r1 and r2.
        m.d.comb += [self.rd_addr.eq(Cat(s0_ri[:log2(cfg.tp)], e_slot) if cfg.tp > 1 else e_slot),
                     self.bias_addr.eq(e_slot), self.rd_en.eq(go)]

        # -- r1, r2: the beat waits for its row ---------------------------------------------
        r1 = carry("r1", valid=e_valid, last=e.last, first=e.first, addb=e_addb, u0=s0_u0,
                   rem=s0_rem, col=s0_col, row=s0_row, trow=s0_trow, row_end=s0_row_end,
                   raw=e_raw, relu=e_relu, mult=e_mult, shift=e_shift, os=e_os, oaddr=e_oaddr)
        r2 = carry("r2", **r1)
        # Per lane, register copies (``_rep``) loaded from r1: the partial-sum line address
        # (``Cat(line, trow)``: each drives only its lane's LUT RAM), ``first`` (the
        # synchronous reset of the lane's read register: one flip-flop resetting all lanes'
        # was the 8 x 4's worst path on 54bed03 seed 1, 11.8 ns, one net) and ``last &
        # bias_en`` (the reset of the lane's bias: one LUT driving all lanes' was the 8 x 4's
        # worst path, 8 ns of wire). The line for the value and the bias selects, a copy
        # each: one register merged with a lane's copy drove the selects from beside that
        # lane's LUT RAM (the 8 x 4's worst path, 9.59 ns of wire, 5 Dec 2026).
        # Partial sums are kept for row tiles of up to ``tr`` rows: the taller tiles of short
        # rows (HwConfig.tile_rows, up to tr_max) are one chunk, so every read of theirs is a
        # first chunk's (zero, no forwarding) and their wrapped lines are never read back.
        ltr, nline = log2(cfg.tr), log2(cfg.tc // E)
        r1_line = r1["u0"][lE:lE + nline]
        paddr_rep = []
        first_rep, addb_rep = [], []
        for l in range(E):
            pa = Signal(nline + ltr, name=f"r2_paddr_rep{l}")
            fi = Signal(name=f"r2_first_rep{l}")
            ab = Signal(name=f"r2_add_bias_rep{l}")
            with m.If(go):
                m.d.sync += [pa.eq(Cat(r1_line, r1["trow"][:ltr])), fi.eq(r1["first"]),
                             ab.eq(r1["addb"])]
            paddr_rep.append(pa)
            first_rep.append(fi)
            addb_rep.append(ab)
        sel_rep = []
        if nline:
            for w in ("v", "b"):
                r = Signal(nline, name=f"r2_line_{w}_rep")
                with m.If(go):
                    m.d.sync += r.eq(r1_line)
                sel_rep.append(r)

        vlines = data.ArrayLayout(line, lpr)(self.rd_data.as_value())
        blines = data.ArrayLayout(data.ArrayLayout(signed(32), E), lpr)(self.bias_data.as_value())
        r2_v = vlines[sel_rep[0]] if sel_rep else vlines[0]
        r2_b = blines[sel_rep[1]] if sel_rep else blines[0]
        r2_colbyte = Mux(r2["raw"], r2["col"] << 2, r2["col"] << leb)

        # Partial sums: read in r2 into a register (zero on a first chunk), written back
        # from s2's registers. One memory per lane, read asynchronously from the lane's copy
        # of the line address. The two beats right behind a write read before it lands:
        # they take the written value from s2 (distance 1) or s3 (distance 2) instead
        # (``s1_fwd1``/``s1_fwd2``, decided in r2); every later beat reads it from the
        # memory. So no path runs from a LUT RAM into the adder.
        r2_paddr = Cat(r2["u0"][lE:lE + nline], r2["trow"][:ltr])
        p_rd, p_wp = Signal(line, name="s1_prd"), []
        for l in range(E):
            # LUT RAM, whatever the depth: yosys would otherwise fold the register behind
            # the read into a block RAM, whose clock-to-output starts the adder's path.
            mem = Memory(shape=lane, depth=cfg.tr * lpr, init=[],
                         attrs={"ram_style": "distributed"})
            m.submodules[f"psum{l}"] = mem
            p_wp.append(mem.write_port())
            rp = mem.read_port(domain="comb")
            m.d.comb += rp.addr.eq(paddr_rep[l])
            with m.If(go):
                m.d.sync += p_rd[l].eq(Mux(first_rep[l], 0, rp.data))

        r2_n = Mux(r2["row_end"], r2["rem"], Mux(r2["raw"], DWR, E))   # units in the beat
        r2_off = r2["u0"][:lE]                            # first lane of the beat in its line
        r2_bias = Signal(line)                            # the bias on the last chunk, or 0
        for l in range(E):
            m.d.comb += r2_bias[l].eq(Mux(addb_rep[l], r2_b[l], 0))

        s1 = carry("s1", valid=r2["valid"], last=r2["last"], v=r2_v, bias=r2_bias,
                   waddr=r2_paddr, n=r2_n, off=r2_off,
                   mask=Cat((r2_off <= l) & (l < r2_off + r2_n) for l in range(E)),
                   boff=r2_colbyte[:lM],                   # first byte of the beat in its word
                   colword=r2_colbyte & ~Const(M - 1, cfg.dim_width + 2), oaddr=r2["oaddr"],
                   raw=r2["raw"], relu=r2["relu"], mult=r2["mult"], shift=r2["shift"])

        # ``row * os`` in a multiplier of its own whose registers are s1 (operands) and s2
        # (product): the output stride is a multiple of M, so the product of the beat's row
        # and ``os / M`` fits one DSP block for dim_width 16.
        rowmul = Multiplier(a_width=cfg.dim_width + 1, b_width=len(e_os) - lM + 1)
        m.submodules.rowmul = rowmul
        m.d.comb += [rowmul.a.eq(r2["row"]), rowmul.b.eq(r2["os"] >> lM), rowmul.en.eq(go)]

        s1_wr = s1["valid"] & ~s1["last"]
        s1_fwd1 = Signal(E, name="s1_fwd1")
        s1_fwd2 = Signal(E, name="s1_fwd2")

        # -- s1: add the partial sums ----------------------------------------------------------
        # y = v + partial + bias through a carry-save stage: one LUT level and one carry chain
        # after the partial-sum read.
        s1_y = Signal(line)
        s2_y = Signal(line, name="s2_y")
        s3_y = Signal(line, name="s3_y")
        for l in range(E):
            a = s1["v"][l].as_unsigned()
            b = Mux(s1_fwd1[l], s2_y[l], Mux(s1_fwd2[l], s3_y[l], p_rd[l])).as_unsigned()
            c = s1["bias"][l].as_unsigned()
            m.d.comb += s1_y[l].eq((a ^ b ^ c) + (((a & b) | (a & c) | (b & c)) << 1))
        with m.If(go):
            m.d.sync += [s2_y.eq(s1_y), s3_y.eq(s2_y)]

        s1_nbytes = Mux(s1["raw"], s1["n"] << 2, s1["n"] << leb)
        s1_strb = Cat((s1["boff"] <= b) & (b < s1["boff"] + s1_nbytes) for b in range(M))

        s2 = carry("s2", busy=s1["valid"], valid=s1["valid"] & s1["last"], strb=s1_strb,
                   wr=s1_wr, waddr=s1["waddr"], mask=s1["mask"],
                   shd=s1["shift"] + (cfg.data_width - 1),
                   **{f: s1[f] for f in ("colword", "oaddr", "boff", "off", "raw",
                                         "relu", "shift", "mult")})
        # write back from s2 (once: held while stalled), each lane's memory from a copy of
        # the line address beside it (``_rep``): one register drove every lane's LUT RAMs,
        # 12 ns of routing on an 8 x 4 placement.
        for l, wp in enumerate(p_wp):
            waddr = Signal.like(s1["waddr"], name=f"s2_waddr_rep{l}")
            with m.If(go):
                m.d.sync += waddr.eq(s1["waddr"])
            m.d.comb += wp.addr.eq(waddr)
        m.d.comb += [wp.data.eq(s2_y[l]) for l, wp in enumerate(p_wp)]
        m.d.comb += [wp.en.eq(s2["wr"] & go & s2["mask"][l]) for l, wp in enumerate(p_wp)]

        # Lanes the beats in s1 and s2 write back (non-last entries) at the line the beat
        # in r2 reads: that beat takes them from s2 or s3 (see above); the nearer wins.
        line1 = ~r2["first"] & (r2_paddr == s1["waddr"])
        line2 = ~r2["first"] & (r2_paddr == s2["waddr"])
        with m.If(go):
            m.d.sync += [s1_fwd1.eq(Cat(s1_wr & s1["mask"][l] & line1 for l in range(E))),
                         s1_fwd2.eq(Cat(s2["wr"] & s2["mask"][l] & line2 for l in range(E)))]

        # ``y * mult`` as two DSP-sized products (y's low L bits unsigned, the rest signed),
        # added in s4, so that each stage holds either a multiplier or an adder. The
        # multipliers take ``s2_y`` and ``mult`` into their input registers (s3) and give
        # the products in s4 (:class:`~.dsp.Multiplier`, in the DSP block on ECP5): every
        # wire to and from the block has a cycle of its own.
        L = 17 if aw > 18 else aw
        mul_lo, mul_hi = [], []
        for l in range(E):
            y = s2_y[l]
            if aw > L:
                lo = Multiplier(a_width=L + 1, b_width=mw)
                hi = Multiplier(a_width=aw - L, b_width=mw)
                m.d.comb += [lo.a.eq(y[:L]), hi.a.eq(y[L:].as_signed()),
                             hi.b.eq(s2["mult"]), hi.en.eq(go)]
                m.submodules[f"mul_hi{l}"] = hi
                mul_hi.append(hi.p)
            else:
                lo = Multiplier(a_width=aw, b_width=mw)
                m.d.comb += lo.a.eq(y)
                mul_hi.append(Const(0, 1))
            m.d.comb += [lo.b.eq(s2["mult"]), lo.en.eq(go)]
            m.submodules[f"mul_lo{l}"] = lo
            mul_lo.append(lo.p)
        # -- s2: row address (the product register) -------------------------------------------
        s2_rowaddr = Signal(cfg.addr_width)
        m.d.comb += s2_rowaddr.eq(rowmul.p.as_unsigned() << lM)
        # The rounding constant 2**(shift-1) (0 for shift 0) and the mask of the bits of q at
        # or above shift + data_width - 1 (q >> shift fits data_width bits iff they all equal
        # the sign), decoded here (from ``shd = shift + data_width - 1``, added in s1) so
        # that s4 and s5 start from registers.
        s2_half = Cat(s2["shift"] == j + 1 for j in range(W))
        s2_high = Cat(s2["shd"] <= j for j in range(W + 1))
        s3 = carry("s3", rowaddr=s2_rowaddr, half=s2_half, high=s2_high,
                   **{f: s2[f] for f in ("busy", "valid", "colword", "oaddr", "strb", "boff", "off",
                                         "raw", "relu", "shift")})

        # -- s3: the address sum (the products are in the multipliers) -------------------------
        s3_addr = Signal(cfg.addr_width)
        m.d.comb += s3_addr.eq(s3["oaddr"] + s3["rowaddr"] + s3["colword"])
        s4 = carry("s4", addr=s3_addr,
                   **{f: s3[f] for f in ("high", "busy", "valid", "strb", "boff", "off",
                                         "raw", "relu", "shift")})

        def lane_copies(stage, name, sig):
            """``sig`` registered into ``stage`` once per lane (``_rep``, kept apart by the
            synthesis flow): each copy drives one lane's logic only. (One s4 register of the
            rounding constant into all eight lanes' adders, beside their multipliers, was
            the 8 x 8's worst path on 5 Dec 2026, late evening: 9.16 of 11.62 ns wire.)"""
            out = []
            for l in range(E):
                r = Signal.like(sig, name=f"{stage}_{name}_rep{l}")
                with m.If(go):
                    m.d.sync += r.eq(sig)
                out.append(r)
            return out

        # -- s4: y * mult + rounding constant -----------------------------------------------
        # Three addends through a carry-save stage: one LUT level and one carry chain.
        s4_q = Signal(data.ArrayLayout(signed(W + 1), E))
        s4_half = lane_copies("s4", "half", s3["half"])
        for l in range(E):
            qa = Signal(W + 1, name=f"s4_qa{l}")
            qb = Signal(W + 1, name=f"s4_qb{l}")
            qc = Signal(W + 1, name=f"s4_qc{l}")
            m.d.comb += [qa.eq(mul_hi[l] << L), qb.eq(mul_lo[l]), qc.eq(s4_half[l])]
            m.d.comb += s4_q[l].eq((qa ^ qb ^ qc) + (((qa & qb) | (qa & qc) | (qb & qc)) << 1))
        s5_high = lane_copies("s5", "high", s4["high"])
        s5 = carry("s5", q=s4_q, addr=s4["addr"],
                   **{f: s4[f] for f in ("busy", "valid", "strb", "boff", "off", "raw", "relu",
                                         "shift")})

        # -- s5: coarse shift and range test ---------------------------------------------------
        # Requant: the upper levels of the log shifter (q >> the shift's upper bits), and
        # whether q >> shift is above or below what data_width bits hold (two wide
        # reductions); s6 finishes the shift, s7 chooses among them.
        dwid = cfg.data_width
        sw = len(s5["shift"])
        fine_bits = sw // 2                                          # shift bits done in s6
        s5_part = Signal(data.ArrayLayout(unsigned(dwid + (1 << fine_bits) - 1), E))
        s5_neg = Signal(E)
        # The range test's two reductions over q's high bits, in groups of 8 here and over
        # the groups in s6: any bit at or above ``shd`` set (q >> shift above the range when
        # q >= 0) or clear (below it when q < 0).
        ngrp = -(-(W + 1) // 8)
        s5_hig = Signal(data.ArrayLayout(ngrp, E))
        s5_log = Signal(data.ArrayLayout(ngrp, E))
        pad = dwid + (1 << sw) - 1 - (W + 1)                         # sign bits _window needs
        for l in range(E):
            q = s5["q"][l]
            neg = q[-1]
            m.d.comb += [
                s5_part[l].eq(_window(m, Cat(q, neg.replicate(max(pad, 0))), s5["shift"], dwid,
                                      f"s5_window{l}", lowest=fine_bits)),
                s5_neg[l].eq(neg),
                s5_hig[l].eq(Cat((q & s5_high[l])[8 * g:8 * g + 8].any() for g in range(ngrp))),
                s5_log[l].eq(Cat((~q & s5_high[l])[8 * g:8 * g + 8].any() for g in range(ngrp))),
            ]
        s5_raw = Signal(data.ArrayLayout(signed(32), E))
        for l in range(E):
            m.d.comb += s5_raw[l].eq(s5["q"][l])
        s6 = carry("s6", part=s5_part, neg=s5_neg, hig=s5_hig, log=s5_log, q=s5_raw,
                   shift=s5["shift"][:fine_bits],
                   **{f: s5[f] for f in ("busy", "valid", "addr", "strb", "boff", "off", "raw",
                                         "relu")})

        # -- s6: fine shift ----------------------------------------------------------------------
        s6_win = Signal(data.ArrayLayout(signed(dwid), E))
        s6_hi = Signal(E)
        s6_lo = Signal(E)
        for l in range(E):
            m.d.comb += [
                s6_win[l].eq(_window(m, s6["part"][l], s6["shift"], dwid,
                                     f"s6_window{l}").as_signed()),
                s6_hi[l].eq(~s6["neg"][l] & s6["hig"][l].any()),
                s6_lo[l].eq(s6["neg"][l] & s6["log"][l].any()),
            ]
        s7 = carry("s7", win=s6_win, hi=s6_hi, lo=s6_lo,
                   **{f: s6[f] for f in ("neg", "q", "busy", "valid", "addr", "strb",
                                         "boff", "off", "raw", "relu")})

        # -- s7: saturate, ReLU ------------------------------------------------------------------
        # Raw: q itself (mult 1, shift 0). ReLU: 0 for negative q (the sign survives the shift).
        s7_z = Signal(data.ArrayLayout(signed(32), E))
        for l in range(E):
            with m.If(s7["relu"] & s7["neg"][l]):
                m.d.comb += s7_z[l].eq(0)
            with m.Elif(s7["raw"]):
                m.d.comb += s7_z[l].eq(s7["q"][l])
            with m.Elif(s7["hi"][l]):
                m.d.comb += s7_z[l].eq(cfg.data_max)
            with m.Elif(s7["lo"][l]):
                m.d.comb += s7_z[l].eq(cfg.data_min)
            with m.Else():
                m.d.comb += s7_z[l].eq(s7["win"][l])
        s8 = carry("s8", z=s7_z,
                   **{f: s7[f] for f in ("busy", "valid", "addr", "strb", "boff", "off", "raw")})

        # -- s8: gather the beat's units at byte 0 ---------------------------------------------
        # (raw: lanes off .. off+DWR-1, 4 bytes each; requant: lanes 0 .. E-1, eb bytes each)
        raw_lanes = Cat(s8["z"][l] for l in range(E)).word_select(s8["off"] >> log2(DWR),
                                                                  8 * M)
        req_lanes = Cat(s8["z"][l][:8 * eb] for l in range(E))
        s8_word = Signal(8 * M)
        m.d.comb += s8_word.eq(Mux(s8["raw"], raw_lanes, req_lanes))
        s9 = carry("s9", word=s8_word, **{f: s8[f] for f in ("busy", "valid", "addr", "strb", "boff")})

        # -- s9: shift the units up to byte boff, register the write on ``wr_req`` ---------------
        # (one stage for the gather and the shift was the 8 x 8's worst path on 5 Dec 2026:
        # the lane select fanned out to 64 multiplexers of six levels, 10.2 ns)
        s9_word = s9["word"]
        for b in range(lM):
            nxt = Signal(8 * M, name=f"s9_word_{b}")
            m.d.comb += nxt.eq(Mux(s9["boff"][b], Cat(Const(0, 8 << b), s9_word), s9_word))
            s9_word = nxt
        strb_bits = Cat(b.replicate(8) for b in s9["strb"])
        with m.If(go):
            m.d.sync += [
                self.wr_req.valid.eq(s9["valid"]),
                self.wr_req.payload.addr.eq(s9["addr"]),
                self.wr_req.payload.strb.eq(s9["strb"]),
                self.wr_req.payload.data.eq(s9_word & strb_bits),
            ]

        # Every beat, written or not, counts as in flight until it leaves the last register.
        out_busy = carry("out", busy=s9["busy"])["busy"]
        m.d.comb += self.idle.eq(~(e_valid | r1["valid"] | r2["valid"] | s1["valid"] | s2["busy"] | s3["busy"] | s4["busy"] | s5["busy"]
                                   | s6["busy"] | s7["busy"] | s8["busy"] | s9["busy"] | out_busy))
        return m
