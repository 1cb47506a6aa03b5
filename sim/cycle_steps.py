"""The static description of a layer's steps for the cycle model
(``fluidnpu.sim.cycle_model``) and the traffic count (``fluidnpu.sim.traffic``): the
tiling of ``HwConfig`` (row tiles, column tiles, reduction chunks, X resident or loaded
in parts), each step's loads and groups, and where the step sequence is periodic
(docs/architecture.md, "Tiling"; docs/cycle_model.md)."""
from __future__ import annotations

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_RAW


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class _Layer:
    """Static description of a layer's steps (docs/architecture.md, "Tiling")."""

    def __init__(self, cfg: HwConfig, R, P, C, bp, k, bias, out_mode):
        tc, tp, M = cfg.tc, cfg.tp, cfg.mem_bytes
        tr = cfg.tile_rows(P, k)
        eb = cfg.elem_bytes
        self.R, self.P, self.C, self.bp = R, P, C, bp
        seg = tp // bp
        self.S = S = k * seg
        self.F = F = tc // k
        cm = cfg.chunk_max(k, tr)
        self.rows = cfg.row_tile_sizes(R, tr)
        self.n_rt = len(self.rows)
        # the first of two balanced last row tiles, if they are balanced (else -1)
        self.pen = self.n_rt - 2 if self.n_rt >= 2 and self.rows[-2] != tr else -1
        self.n_ct = _ceil(C, F)
        self.chunks = cfg.chunk_sizes(P, k, tr)      # the last two balanced (HwConfig)
        self.n_ch = len(self.chunks)
        # the chunk before the last is a half chunk (the last two balanced)
        self.cbal = self.n_ch >= 2 and self.chunks[-2] != cm
        self.rt_len = self.n_ct * self.n_ch
        self.n_steps = self.n_rt * self.rt_len
        self.single = self.n_ct == 1 and self.n_ch == 1
        # chunked with X resident: X loaded a chunk a step at each row tile's first column
        # tile, one slot per row tile (HwConfig.x_resident)
        self.xres = cfg.x_resident(P, k)
        # X of row tile rt + 1 is loaded in parts of ``xq`` rows, one part after each W
        # load of row tile rt but the first (hw/loader.py)
        self.ilv = self.n_ch == 1 and self.n_ct > 1 and self.n_rt > 1
        self.xq = max(1, tr >> ((self.n_ct - 1).bit_length() - 1)) if self.ilv else 0
        self.xparts = _ceil(tr, self.xq) if self.ilv else 0
        dw = M // 4 if out_mode == OUT_RAW else cfg.elems_per_beat
        self.bias = bool(bias)
        self.tr, self.M, self.eb, self.dw = tr, M, eb, dw
        self._cache = {}

    def step(self, j: int):
        """Per-step values, cached by the step's class (rt first/last, ct first/last,
        last chunk, and the bias beat count, which can depend on the column offset)."""
        rt, rem = divmod(j, self.rt_len)
        ct, ch = divmod(rem, self.n_ch)
        last_rt = rt == self.n_rt - 1
        last_ct = ct == self.n_ct - 1
        last_ch = ch == self.n_ch - 1
        need_bias = self.bias and last_ch
        nbb = 0
        if need_bias:
            M = self.M
            c0 = ct * self.F
            ncols = min(self.F, self.C - c0)
            boff = (c0 * 4) & (M - 1)
            nbb = (boff + ncols * 4 + M - 1) // M
        key = (rt == 0, last_rt, rt == self.pen, ct == 0, last_ct, last_ch, self.chunks[ch], nbb,
               self.xres and ct == 0 and ch > 0)
        if self.ilv:
            key += (None if last_rt else self.rows[rt + 1], min(ct, self.xparts + 1))
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self._make(rt, ct, ch, nbb)
        return v

    def _make(self, rt, ct, ch, nbb):
        M, eb, bp = self.M, self.eb, self.bp
        rows = self.rows[rt]
        ncols = min(self.F, self.C - ct * self.F)
        ln = self.chunks[ch]
        n_s = _ceil(ln, self.S)
        n_g = _ceil(rows, bp)
        nb = _ceil(ln * eb, M)
        x_each = self.n_ch > 1 and not self.xres      # X loaded for every step
        x_new = x_each or ct == 0
        x_piece = self.xres and ch > 0                  # a resident X's later chunk
        x_wait = self.ilv and rt > 0 and ct == 0        # X loaded in parts in row tile rt - 1
        x_whole = x_new and not x_wait
        w_new = not self.single or rt == 0
        xpb, xp_last = 0, False                         # this step's part of the next X
        if self.ilv and rt < self.n_rt - 1 and ct > 0:
            nxt, r0 = self.rows[rt + 1], (ct - 1) * self.xq
            if r0 < nxt:
                xpb = min(self.xq, nxt - r0) * nb
                xp_last = r0 + self.xq >= nxt
        last_ch = ch == self.n_ch - 1
        x_last = x_each or (ct == self.n_ct - 1 and last_ch)
        w_last = not self.single or rt == self.n_rt - 1
        cb = _ceil(ncols, self.dw)
        fb = bp * cb                                   # drain beats of a full group
        lb = (rows - (n_g - 1) * bp) * cb              # ... of the last group
        return (n_s, n_g, fb, lb, last_ch,
                rows * nb if x_whole else 0, ncols * nb if w_new else 0, nbb if w_new else 0,
                x_last, w_last, x_wait, xpb, xp_last, rows - (n_g - 1) * bp, x_piece)

    def periodic_end(self, j: int, d: int) -> int:
        """The largest ``e`` such that steps ``m`` and ``m - d`` behave the same (same step
        class) for every ``m`` in ``[j, e)``; ``j`` if there is none. Never past the last
        step but one (the last step ends the layer).

        A step's class depends on its chunk only through its length (a full chunk, the
        half chunk before a balanced last one, the last: ``HwConfig.chunk_sizes``) and,
        at the first column tile of a resident X, through "first" (the chunk that waits for
        the slot); on its column tile only through "first" (X loaded only when ``n_ch ==
        1`` or resident) and "last" (X freed when ``n_ch == 1`` or resident, fewer columns
        when ``F`` does not divide ``C``), and on its row tile
        only through "first" (W loaded once per layer when ``n_ct == n_ch == 1``), "last"
        (fewer rows when ``tr`` does not divide ``R``; W freed in the single case) and the
        half tile before the last when the last two are balanced (``pen``).
        """
        n_ch, n_ct, n_rt = self.n_ch, self.n_ct, self.n_rt
        if self.ilv:
            # X in parts: a step's class depends on its column tile (its part of the next
            # X) and on whether its row tile is the first (X loaded whole) or one of the
            # last three (the next X shorter, the pen tile, the last). Periods inside one
            # row tile: among the steps with a part that is not the last (column tiles
            # 1 .. np - 1) or among those with none (np + 1 .. n_ct - 2); else whole row
            # tiles between the first and the last three.
            rt, ct = divmod(j, self.rt_len)
            if d < self.rt_len:
                np_ = _ceil(self.rows[rt + 1], self.xq) if rt < n_rt - 1 else 0
                for a, b in ((1, np_ - 1), (np_ + 1, n_ct - 2)):
                    if a <= ct - d and ct <= b:
                        return max(j, min(rt * self.rt_len + b + 1, self.n_steps - 1))
                return j
            if d % self.rt_len or rt - d // self.rt_len < 1:
                return j
            tail = (self.pen if self.pen >= 0 else n_rt - 1) - 1
            if rt >= tail:
                return j
            return max(j, min(tail * self.rt_len, self.n_steps - 1))
        rt, rem = divmod(j, self.rt_len)
        ct, ch = divmod(rem, n_ch)
        nf = n_ch - 1 - self.cbal                     # full chunks: 0 .. nf - 1
        # inside one tile, full chunks (not the first of a resident X's first column tile)
        if d + (self.xres and ct == 0) <= ch <= nf - 1:
            return j - ch + nf
        if d % n_ch:
            return j
        kk = d // n_ch                                # whole tiles: work on tile indices
        u = j // n_ch                                 # tile index rt * n_ct + ct
        ct0 = n_ct > 1 and (n_ch == 1 or self.xres)
        ctl = n_ct > 1 and (n_ch == 1 or self.xres or self.C % self.F != 0)
        rt0 = n_rt > 1 and self.single
        rtl = n_rt > 1 and (self.single or self.R % self.tr != 0)
        if (ct0 or ctl) and kk % n_ct:
            # the tiles m and m - d have different column tiles: stay inside one row tile,
            # away from the column tiles that differ
            if ct - kk < (1 if ct0 else 0):
                return j
            vend = rt * n_ct + (n_ct - 1 if ctl else n_ct)
        else:
            # same column tile class: only the row tile classes can differ
            last0 = (n_rt - 1) * n_ct                 # first tile of the last row tile
            tail0 = self.pen * n_ct if self.pen >= 0 else last0   # ... of the pen tile
            if rt0 and u - kk < n_ct:
                return j
            if not rtl or u - kk >= last0:
                vend = n_rt * n_ct
            elif u - kk >= tail0:                     # both in the pen row tile
                if u >= last0:
                    return j
                vend = last0
            elif u < tail0:
                vend = tail0
            else:
                return j
        return max(j, min(vend * n_ch, self.n_steps - 1))
