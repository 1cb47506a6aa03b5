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

* ``s0``: beat counters over the held entry (its sums in a row shift register: a beat
  reads row 0, which moves on at the end of each row); select the value and bias lines;
  read the partial-sum line; lane mask; whether the beats ahead write the line it reads.
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
from the beat counters' registers) in ``s0``, registered, and written back from ``s2``; the
two beats right behind a write read before it lands and take the written lanes from
``s2``'s (distance 1) or ``s3``'s (distance 2) copy of ``y`` instead, every later beat reads
them from the memory, which covers the read-after-write distances of the
read-modify-write.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import HwConfig
from .dsp import Multiplier
from .interface import OUT_RAW, layer_desc_layout, log2, wr_req_layout

__all__ = ["stage_layout", "Drain"]


def stage_layout(cfg: HwConfig) -> data.StructLayout:
    """One finished PE-array group: ``vals[i*tc + u]`` is the sum of row ``i``, unit ``u``."""
    return data.StructLayout({
        "vals": data.ArrayLayout(signed(cfg.acc_width), cfg.tp * cfg.tc),
        "bias": data.ArrayLayout(signed(32), cfg.tc),    # read on last entries (bias_en) only
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
    LATENCY = 10

    def __init__(self, cfg: HwConfig):
        if not isinstance(cfg, HwConfig):
            raise TypeError(f"cfg = {cfg!r}: must be a HwConfig")
        self.cfg = cfg
        super().__init__({
            "layer": In(layer_desc_layout(cfg)),
            "stage": In(stream.Signature(stage_layout(cfg))),
            "wr_req": Out(stream.Signature(wr_req_layout(cfg))),
            "idle": Out(1),
            # Copies of ``stage.valid``, equal to it in every cycle, from registers of their
            # own (the stage FIFO's next "not empty", computed by its owner): each enables
            # one slice of the wide entry register, so no single net from the FIFO's level
            # reaches thousands of enables (the 8 x 8's worst path, docs/synthesis.md).
            "stage_valid_rep": In(self.entry_slices(cfg)),
            # Copies of ``stage.ready``, equal to it in every cycle, one per slice, each
            # from the slice's own copies of ``s0_entry_valid`` and ``s0_last``: for the
            # stage FIFO's per-slice pops (hw/stage_fifo.py ``r_en_rep``).
            "stage_ready_rep": Out(self.entry_slices(cfg)),
            # The entry's flags ``REP_FIELDS`` once per slice, equal to the payload's: the
            # stage FIFO stores them in each of its slices (``StageFIFO.r_flags``), so each
            # slice of the entry register takes them from its own FIFO slice; read from one
            # FIFO slice into every slice they were the 8 x 4's worst path (5 Dec 2026,
            # 7.54 ns of wire).
            "stage_rep": In(data.ArrayLayout(self.rep_layout(cfg), self.entry_slices(cfg))),
        })

    #: the stage entry's beat fields stored once per stage-FIFO slice (``stage_rep``)
    REP_FIELDS = ("row1", "last1", "row2", "last2", "nb_m1", "nrows")

    @classmethod
    def rep_layout(cls, cfg: HwConfig) -> data.StructLayout:
        """The ``REP_FIELDS`` of a stage entry, in that order (as ``Cat`` packs them)."""
        st = stage_layout(cfg)
        return data.StructLayout({n: st[n].shape for n in cls.REP_FIELDS})

    #: entry-register slices per register copy of the next beat's flags (``s0_f1_rep``)
    SLICES_PER_GROUP = 6

    @staticmethod
    def entry_slices(cfg: HwConfig) -> int:
        """Slices of the entry register, each loaded under an enable of its own: about 64
        flip-flops each, so an enable's LUT can sit beside the flip-flops it drives (with
        256 per enable the net spanned 13-19 rows of the 4 x 4: its worst path once the
        block RAMs were floorplanned, docs/synthesis.md)."""
        return max(1, -(-stage_layout(cfg).size // 64))

    @property
    def latency(self) -> int:
        return self.LATENCY

    @staticmethod
    def entry_beats(cfg: HwConfig, layer, nrows, ncols) -> dict:
        """The beat fields of a stage entry (``nb_m1`` ... ``last2``), as values for its
        writer to store with it. The drain's accept and its 21 slice copies (8 x 4) read
        them as stored bits: derived from the FIFO's output and ``layer`` at the accept,
        they were the 8 x 4's worst path. Compares only (no product of rows and beats:
        its adders were the next worst path, into the stage FIFO's write data)."""
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
    def _load_entry(m, rows, e, new, take, shift) -> None:
        """The entry register (the row shift register ``rows``, then the other fields ``e``:
        the stage entry's layout) loads an accepted entry (``take``); row ``j`` moves down
        to ``j - 1`` when the held entry's row ends (``shift``).

        Its bits are cut into ``len(take)`` slices exactly as the stage FIFO cuts the entry
        (``width * i // n``), and slice ``i`` is loaded under ``take[i]`` / ``shift[i]``: each
        slice takes its bits from its own FIFO slice (cut otherwise, row by row, the
        drain's slice 10 sat 30 columns from the FIFO slice it read, 5 Dec 2026)."""
        n = len(take)
        nrows = len(rows)
        rw = len(rows[0].as_value())
        flat_new = Value.cast(new)
        n_rows_bits = nrows * rw
        width = n_rows_bits + len(Value.cast(e))
        cut = [width * i // n for i in range(n + 1)]
        for i in range(n):
            lo, hi = cut[i], cut[i + 1]
            for j in range(nrows):
                a, b = max(lo, j * rw), min(hi, (j + 1) * rw)
                if a >= b:
                    continue
                cur = rows[j].as_value()[a - j * rw:b - j * rw]
                with m.If(take[i]):
                    m.d.sync += cur.eq(flat_new[a:b])
                if j + 1 < nrows:
                    with m.Elif(shift[i]):
                        m.d.sync += cur.eq(rows[j + 1].as_value()[a - j * rw:b - j * rw])
            a, b = max(lo, n_rows_bits), hi
            if a < b:
                with m.If(take[i]):
                    m.d.sync += Value.cast(e)[a - n_rows_bits:b - n_rows_bits].eq(flat_new[a:b])

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

        # -- entry register and beat counters (s0) ---------------------------------------------
        # The entry's sums live in a row shift register (``s0_rows``; row 0 is the row being
        # drained): a beat reads row 0 only, so no wide select spans the entry; its other
        # fields in ``e``.
        rest = data.StructLayout({n: f.shape for n, f in stage_layout(cfg) if n != "vals"})
        e = Signal(rest, name="s0_entry")
        rows_lay = data.ArrayLayout(data.ArrayLayout(lane, cfg.tc), cfg.tp)
        s0_rows = Signal(rows_lay, name="s0_rows")
        e_valid = Signal(name="s0_entry_valid")
        e_raw = Signal(name="s0_raw")
        e_relu = Signal(name="s0_relu")
        e_mult = Signal(signed(mw), name="s0_mult")
        e_shift = Signal(range(W + 1), name="s0_shift")
        e_os = Signal(cfg.dim_width + 3, name="s0_os")
        e_oaddr = Signal(cfg.addr_width, name="s0_oaddr")
        s0_u0 = Signal(range(cfg.tc + 1))         # first unit of the beat
        s0_rem = Signal(range(cfg.tc + 1))        # units of the row from u0 on
        s0_col = Signal(cfg.dim_width)            # c0 + u0
        s0_row = Signal(cfg.dim_width)            # row0 + i
        s0_trow = Signal(log2(cfg.tr_max) + 1)        # trow0 + i
        s0_row_end = Signal()                     # the beat ends its row (rem <= DW)
        s0_last = Signal()                        # the beat is the entry's last
        s0_rb = Signal.like(e.nb_m1, name="s0_rb")           # beats of the row after this one
        s0_rl = Signal.like(e.nrows, name="s0_rl")           # rows of the entry after this one
        s0_e1 = Signal(name="s0_e1")              # s0_row_end after the next beat
        s0_f1 = Signal(name="s0_f1")              # s0_last after the next beat

        # -- s0: issue one beat per cycle ------------------------------------------------------
        # Whether the beat ends its row and whether it is the last are registers, and so are
        # their values for the next beat (``s0_e1``, ``s0_f1``, from the beat counters two
        # beats ahead): stage.ready and the slice enables are shallow, and the slices' copies
        # load a register, not a sum (the 8 x 4's worst path was such a sum, 5 ns away).
        s0_dw = Mux(e_raw, DWR, E)
        m.d.comb += self.stage.ready.eq(go & (~e_valid | s0_last))
        # The entry register is wide (every sum of a group): its load enable is computed
        # once per slice of it from register copies of ``e_valid`` and ``s0_last``
        # (``_rep``), so that no single net enables thousands of flip-flops.
        n_take = self.entry_slices(cfg)
        e_valid_rep = [Signal(name=f"s0_entry_valid_rep{i}") for i in range(n_take)]
        s0_last_rep = [Signal(name=f"s0_last_rep{i}") for i in range(n_take)]
        s0_row_end_rep = [Signal(name=f"s0_row_end_rep{i}") for i in range(n_take)]
        # The partial-sum line address (``Cat(line, trow)``) as a register copy per lane
        # (``_rep``: each drives only its lane's LUT RAM), following s0_u0 and s0_trow.
        # Partial sums are kept for row tiles of up to ``tr`` rows: the taller tiles of short
        # rows (HwConfig.tile_rows, up to tr_max) are one chunk, so every read of theirs is a
        # first chunk's (zero, no forwarding) and their wrapped lines are never read back.
        ltr, nline = log2(cfg.tr), log2(cfg.tc // E)
        paddr_rep = [Signal(nline + ltr, name=f"s0_paddr_rep{l}") for l in range(E)]

        # The line within the tile row for the value and the bias selects, a register copy
        # each (``_rep``): the central ``s0_u0``'s bits equal the copies above, so synthesis
        # merged them into one lane's copy, which then drove the selects from beside that
        # lane's LUT RAM (the 8 x 4's worst path, 9.59 ns of wire, 5 Dec 2026).
        sel_rep = [Signal(nline, name=f"s0_line_{w}_rep") for w in ("v", "b")] if nline else []

        def paddr_to(u0, trow):
            return ([r.eq(Cat(u0[lE:lE + nline], trow[:ltr])) for r in paddr_rep]
                    + [r.eq(u0[lE:lE + nline]) for r in sel_rep])

        with m.If(e_valid & go):
            e1n, f1n, rbn, rln = self._beats_ahead(s0_rb, s0_rl, e.nb_m1, s0_e1, s0_row_end)
            m.d.sync += [s0_row_end.eq(s0_e1), s0_last.eq(s0_f1), s0_e1.eq(e1n), s0_f1.eq(f1n),
                         s0_rb.eq(rbn), s0_rl.eq(rln)]
            with m.If(s0_row_end):
                m.d.sync += [s0_u0.eq(0), s0_rem.eq(e.ncols), s0_col.eq(e.c0),
                             s0_row.eq(s0_row + 1), s0_trow.eq(s0_trow + 1)]
                m.d.sync += paddr_to(Const(0, len(s0_u0)), s0_trow + 1)
            with m.Else():
                m.d.sync += [s0_u0.eq(s0_u0 + s0_dw), s0_rem.eq(s0_rem - s0_dw),
                             s0_col.eq(s0_col + s0_dw)]
                m.d.sync += paddr_to((s0_u0 + s0_dw)[:len(s0_u0)], s0_trow)
            with m.If(s0_last):
                m.d.sync += e_valid.eq(0)

        # Accepting an entry (possibly in the cycle of the previous entry's last beat) resets
        # the beat counters and captures the layer fields the entry needs.
        lay, new = self.layer, self.stage.payload
        raw = lay.out_mode == OUT_RAW
        ob_bytes = Mux(raw, lay.c << 2, lay.c << leb)
        accept = self.stage.valid & self.stage.ready
        with m.If(accept):
            m.d.sync += [
                e_valid.eq(1),
                s0_u0.eq(0), s0_rem.eq(new.ncols), s0_col.eq(new.c0),
                s0_row.eq(new.row0), s0_trow.eq(new.trow0),
                s0_row_end.eq(new.row1), s0_last.eq(new.last1), s0_e1.eq(new.row2),
                s0_f1.eq(new.last2), s0_rb.eq(new.nb_m1), s0_rl.eq(new.nrows - 1),
                e_raw.eq(raw), e_relu.eq(lay.relu),
                e_mult.eq(Mux(raw, 1, lay.mult)),
                e_shift.eq(Mux(raw, 0, Mux(lay.shift > W, W, lay.shift))),
                e_os.eq((ob_bytes + (M - 1)) & ~Const(M - 1, cfg.dim_width + 3)),
                e_oaddr.eq(lay.o_addr),
            ]
            m.d.sync += paddr_to(Const(0, len(s0_u0)), new.trow0)
        m.d.comb += self.stage_ready_rep.eq(Cat(go & (~v | last)
                                                for v, last in zip(e_valid_rep, s0_last_rep)))
        take = [self.stage_valid_rep[i] & self.stage_ready_rep[i] for i in range(n_take)]
        # Each slice's copies follow e_valid, s0_last and s0_row_end under the slice's own
        # ``take`` (equal to stage.valid & stage.ready): one shared accept decision fanned
        # out to the copies was the 8 x 4's worst path (5 ns of routing to a far slice).
        # The next beat's flags reach the slices through a register copy per group of
        # ``SLICES_PER_GROUP`` slices (``s0_e1_rep``, ``s0_f1_rep``): one register into all
        # 37 slices was the 8 x 8's worst path on 085289d (``s0_f1``, 14.85 ns of wire). Each
        # group keeps the beat counters of its own (``s0_rb_rep``, ``s0_rl_rep``, from the
        # entry's fields in its first slice's FIFO slice) and follows its first slice's
        # ``take`` and entry flag: the central counters' next flags into every group were the
        # 8 x 8's worst path on 9c963df (11.50 ns, 8.65 of it wire across 90 columns).
        n_grp = -(-n_take // self.SLICES_PER_GROUP)
        grp = []
        flags = [self.stage_rep[i] for i in range(n_take)]
        for g in range(n_grp):
            i0 = g * self.SLICES_PER_GROUP
            e1 = Signal(name=f"s0_e1_rep{g}")
            f1 = Signal(name=f"s0_f1_rep{g}")
            rb = Signal.like(s0_rb, name=f"s0_rb_rep{g}")
            rl = Signal.like(s0_rl, name=f"s0_rl_rep{g}")
            nb = Signal.like(e.nb_m1, name=f"s0_nb_m1_rep{g}")
            fl = flags[i0]
            with m.If(take[i0]):
                m.d.sync += [e1.eq(fl.row2), f1.eq(fl.last2), rb.eq(fl.nb_m1),
                             rl.eq(fl.nrows - 1), nb.eq(fl.nb_m1)]
            with m.Elif(e_valid_rep[i0] & go):
                e1n, f1n, rbn, rln = self._beats_ahead(rb, rl, nb, e1, s0_row_end_rep[i0])
                m.d.sync += [e1.eq(e1n), f1.eq(f1n), rb.eq(rbn), rl.eq(rln)]
            grp.append((e1, f1))
        for i in range(n_take):
            e1, f1 = grp[i // self.SLICES_PER_GROUP]
            with m.If(take[i]):
                m.d.sync += [e_valid_rep[i].eq(1), s0_last_rep[i].eq(flags[i].last1),
                             s0_row_end_rep[i].eq(flags[i].row1)]
            with m.Elif(e_valid_rep[i] & go):
                m.d.sync += [s0_last_rep[i].eq(f1), s0_row_end_rep[i].eq(e1)]
                with m.If(s0_last_rep[i]):
                    m.d.sync += e_valid_rep[i].eq(0)
        self._load_entry(m, s0_rows, e, new, take,
                         [v & go & end for v, end in zip(e_valid_rep, s0_row_end_rep)])

        s0_line = s0_u0[lE:lE + log2(lpr)]                 # line within the tile row
        vlines = data.ArrayLayout(line, lpr)(s0_rows[0].as_value())
        blines = data.ArrayLayout(data.ArrayLayout(signed(32), E), lpr)(e.bias.as_value())
        s0_v = vlines[sel_rep[0]] if sel_rep else vlines[0]
        s0_b = blines[sel_rep[1]] if sel_rep else blines[0]
        s0_colbyte = Mux(e_raw, s0_col << 2, s0_col << leb)

        # Partial sums: read in s0 into a register (zero on a first chunk), written back
        # from s2's registers. One memory per lane, read asynchronously from the lane's copy
        # of the line address. The two beats right behind a write read before it lands:
        # they take the written value from s2 (distance 1) or s3 (distance 2) instead
        # (``s1_fwd1``/``s1_fwd2``, decided in s0); every later beat reads it from the
        # memory. So no path runs from a LUT RAM into the adder.
        s0_paddr = Cat(s0_line, s0_trow[:ltr])
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
            # the entry's ``first`` as a copy per lane (``_rep``): it is the synchronous
            # reset of the lane's read register, and one flip-flop resetting all lanes' was
            # the 8 x 4's worst path on 54bed03 seed 1 (11.8 ns, one net).
            first_l = Signal(name=f"s0_first_rep{l}")
            with m.If(take[l % n_take]):
                m.d.sync += first_l.eq(new.first)
            with m.If(go):
                m.d.sync += p_rd[l].eq(Mux(first_l, 0, rp.data))

        s0_n = Mux(s0_row_end, s0_rem, s0_dw)             # units in the beat
        s0_off = s0_u0[:lE]                               # first lane of the beat in its line
        s0_bias = Signal(line)                             # the bias on the last chunk, or 0
        for l in range(E):
            # ``last & bias_en`` as a register copy per lane (``_rep``), loaded with the
            # entry: it is the synchronous reset of the lane's 32 bias flip-flops in s1, and
            # one LUT driving all lanes' was the 8 x 4's worst path (8 ns of wire, seed 1).
            add_b = Signal(name=f"s0_add_bias_rep{l}")
            with m.If(take[l % n_take]):
                m.d.sync += add_b.eq(new.last & lay.bias_en)
            m.d.comb += s0_bias[l].eq(Mux(add_b, s0_b[l], 0))

        s1 = carry("s1", valid=e_valid, last=e.last, v=s0_v, bias=s0_bias,
                   waddr=s0_paddr, n=s0_n, off=s0_off,
                   mask=Cat((s0_off <= l) & (l < s0_off + s0_n) for l in range(E)),
                   boff=s0_colbyte[:lM],                   # first byte of the beat in its word
                   colword=s0_colbyte & ~Const(M - 1, cfg.dim_width + 2), oaddr=e_oaddr,
                   raw=e_raw, relu=e_relu, mult=e_mult, shift=e_shift)

        # ``row * os`` in a multiplier of its own whose registers are s1 (operands) and s2
        # (product): the output stride is a multiple of M, so the product of the beat's row
        # and ``os / M`` fits one DSP block for dim_width 16.
        rowmul = Multiplier(a_width=cfg.dim_width + 1, b_width=len(e_os) - lM + 1)
        m.submodules.rowmul = rowmul
        m.d.comb += [rowmul.a.eq(s0_row), rowmul.b.eq(e_os >> lM), rowmul.en.eq(go)]

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
        # in s0 reads: that beat takes them from s2 or s3 (see above); the nearer wins.
        line1 = ~e.first & (s0_paddr == s1["waddr"])
        line2 = ~e.first & (s0_paddr == s2["waddr"])
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
        m.d.comb += self.idle.eq(~(e_valid | s1["valid"] | s2["busy"] | s3["busy"] | s4["busy"] | s5["busy"]
                                   | s6["busy"] | s7["busy"] | s8["busy"] | s9["busy"] | out_busy))
        return m
