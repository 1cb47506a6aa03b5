"""The cycle model's engines (``fluidnpu.sim.cycle_model``): a request channel of the
memory model (``hw/tb/memory.py``) as closed forms over runs of requests, and the drain
(without and with write stalls). Times are absolute cycles; ``snap`` gives an engine's
state relative to a reference cycle for the model's steady-state extrapolation, ``shift``
moves it by a whole number of periods."""
from __future__ import annotations

from collections import deque

_NEG = -(1 << 62)          # "long ago"
_OLD = "old"               # snapshot marker for a time too far back to matter


# ---- a request channel of the memory model (reads, or writes) -----------------------

class _Chan:
    """Request times of one stream of ``hw/tb/memory.py``: a request transfers at the
    earliest cycle >= its availability with (a) >= the previous transfer + ``I`` and
    (b) fewer than ``cap`` outstanding, i.e. >= the transfer ``cap`` requests back +
    ``lat`` + 1 (its response is transferred ``lat`` cycles after the request). (b) only
    binds when ``cap < lat + 1``."""

    __slots__ = ("I", "cap", "P", "windowed", "last", "hist")

    def __init__(self, interval: int, cap: int, lat: int):
        self.I = interval
        self.cap = cap
        self.P = lat + 1
        self.windowed = cap < lat + 1
        self.last = _NEG
        self.hist: deque = deque(maxlen=cap)

    def one(self, avail: int) -> int:
        t = self.last + self.I
        if avail > t:
            t = avail
        if self.windowed:
            h = self.hist
            if len(h) == self.cap and h[0] + self.P > t:
                t = h[0] + self.P
            h.append(t)
        self.last = t
        return t

    def run(self, start: int, n: int) -> int:
        """``n >= 1`` requests available from ``start``, each the cycle after the previous
        transfer (an FSM state issuing a beat per cycle); returns the last transfer."""
        I = self.I
        if not self.windowed:
            t = self.last + I
            if start > t:
                t = start
            t += (n - 1) * I
            self.last = t
            return t
        # Explicitly the first min(n, 2 cap) (the transient), then closed forms for
        # t[i] = max(t[i-1] + I, t[i-cap] + P) (i >= 1 inside the run):
        # * cap*I >= P: for i >= cap all cap gaps of the window lie in the run and are
        #   >= I, so t[i-1] + I >= t[i-cap] + cap*I >= t[i-cap] + P: spacing I.
        # * cap*I < P: suppose t[i] = t[i-1] + I > t[i-cap] + P. Follow the chain of
        #   I-spacings back to the first j with t[j] != t[j-1] + I, i.e. t[j] =
        #   t[j-cap] + P or j = 0. If j >= cap, t[i-cap] >= t[j-cap] + (i-j)I gives
        #   t[i-cap] + P >= t[i-1] + I, a contradiction; if j <= i - cap, then t[i-cap] =
        #   t[j] + (i-cap-j)I and P > cap*I give one too. So j > i - cap and j < cap:
        #   i < 2 cap - 1. Hence t[i] = t[i-cap] + P for every i >= 2 cap - 1.
        cap, P = self.cap, self.P
        m = min(n, 2 * cap)
        seq = []
        t = self.one(start)
        seq.append(t)
        for _ in range(m - 1):
            t = self.one(t + 1)
            seq.append(t)
        if n == m:
            return t
        if cap * I >= P:
            last = t + (n - m) * I
            self.hist.clear()
            self.hist.extend(last - (cap - 1 - i) * I for i in range(cap))
        else:
            def at(i):
                q = (i - cap) // cap
                return seq[i - q * cap] + q * P
            last = at(n - 1)
            self.hist.clear()
            self.hist.extend(at(i) for i in range(n - cap, n))
        self.last = last
        return last

    def shift(self, dt: int) -> None:
        if self.last != _NEG:
            self.last += dt
        if self.windowed:
            h = [x + dt for x in self.hist]
            self.hist.clear()
            self.hist.extend(h)

    def snap(self, ref: int, low: int) -> tuple:
        s = (_rel(self.last, ref, low),)
        if self.windowed:
            s += tuple(_rel(x, ref, low) for x in self.hist)
        return s


def _rel(t, ref: int, low: int):
    if t is None:
        return None
    return t - ref if t >= low else _OLD


# ---- the drain ------------------------------------------------------------------------

class _FastDrain:
    """Drain when writes never stall (``interval == 1`` and ``wr_depth >= wr_latency + 1``):
    an entry available in ``a`` is accepted in ``p = max(a, free)``, its ``n`` beats issue
    in ``p+1 .. p+n`` (the next entry can be accepted in ``p+n``), writes transfer
    ``DRAIN_LATENCY`` cycles after their beat."""

    __slots__ = ("free", "last_w", "lat")

    def __init__(self, latency: int):
        self.free = _NEG
        self.last_w = _NEG
        self.lat = latency

    def accept(self, avail: int, n: int, write: bool) -> int:
        p = self.free if self.free > avail else avail
        self.free = p + n
        if write:
            self.last_w = p + n + self.lat
        return p

    def finish(self) -> int:
        return self.last_w

    def shift(self, dt: int) -> None:
        self.free += dt
        self.last_w += dt

    def snap(self, ref: int, low: int) -> tuple:
        return (_rel(self.free, ref, low),)


class _TickDrain:
    """Drain with write stalls, tick by tick (a tick is a cycle without stall). The drain's
    pipeline moves rigidly: a beat issued in tick T is on ``wr_req`` in tick
    T + DRAIN_LATENCY; a cycle in which a write is on ``wr_req`` but ``wr_req.ready`` is 0
    freezes all of it."""

    __slots__ = ("now", "pipe", "left", "wbeat", "wr")

    def __init__(self, wr: _Chan, latency: int):
        self.now = -1                    # real cycle of the last processed tick
        self.pipe = deque([False] * latency)   # beats of the last ``latency`` ticks (write?)
        self.left = 0                    # beats of the held entry still to issue
        self.wbeat = False               # ... and whether they write
        self.wr = wr

    def _tick(self) -> None:
        out = self.pipe.popleft()
        t = self.now + 1
        if out:
            t = self.wr.one(t)
        self.now = t
        if self.left:
            self.pipe.append(self.wbeat)
            self.left -= 1
        else:
            self.pipe.append(False)

    def accept(self, avail: int, n: int, write: bool) -> int:
        while True:
            if not self.left and self.now + 1 < avail and not any(self.pipe):
                self.now = avail - 1             # idle ticks, nothing to stall on
            self._tick()
            if not self.left and self.now >= avail:
                self.left, self.wbeat = n, write
                return self.now

    def finish(self) -> int:
        while self.left or any(self.pipe):
            self._tick()
        return self.wr.last

    def shift(self, dt: int) -> None:
        self.now += dt
        self.wr.shift(dt)

    def snap(self, ref: int, low: int) -> tuple:
        return (_rel(self.now, ref, low), tuple(self.pipe), self.left, self.wbeat) + \
            self.wr.snap(ref, low)
