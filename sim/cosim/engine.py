"""The serving simulator's FBE mode: a :class:`~.host.Host` driven by the FBE's cycle model.

It steps the FBE's state machine entry by entry (BOUND, DEC, POL, the GEMM commands,
LDONE, the exit unit per position, NEXT; REQ/ALLOC, MERGE, resume, IDLE) with the
costs of :class:`~.timing.FbeTiming`, keeps the batch positions as the FBE does
(exits compact them, a merge appends the catch-up), and calls the host at the cycles
the RTL would. Requests leave at their reference exits (the numpy reference of their
input), which the RTL reproduces bit-exactly.
"""
from __future__ import annotations

from .host import CosimError, Host
from .timing import ANSWER_CYCLES, FbeTiming

__all__ = ["FbeEngine"]

IDLE, MAIN, CATCHUP = "idle", "main", "catchup"


class FbeEngine:
    """Run ``host`` to the end on ``timing``; ``exits[r]`` is request ``r``'s exit."""

    def __init__(self, host: Host, timing: FbeTiming, exits, *, max_cycles: int | None = None):
        self.host, self.t, self.exits = host, timing, [int(e) for e in exits]
        self.max_cycles = max_cycles
        self.events: list[tuple] = []      # (cycle, kind, entry, ctx, count): as the RTL's event stream

    def run(self) -> int:
        """Returns the cycle after the last event."""
        h, T, ex, ev = self.host, self.t, self.exits, self.events
        prog = T.prog
        mode, main, cu = IDLE, [], []
        l = l_old = 0
        hold = False
        c = h.next_consult()
        t = 0
        while True:
            if self.max_cycles is not None and max(t, c or 0) > self.max_cycles:
                raise CosimError(f"FBE model: no end after {self.max_cycles} cycles")
            if mode == IDLE:
                if c is None:
                    if h.n_queued:
                        raise CosimError(f"{h.n_queued} requests queued with nothing to wake the host")
                    break
                rids = h.decide_idle(c)
                if not rids:
                    c = h.next_consult()
                    continue
                ev.append((c + ANSWER_CYCLES + len(rids) + 1, "accept", 0, 0, len(rids)))
                main, mode, l = list(rids), MAIN, 0
                t = T.start_bound(c, len(rids))
                continue
            # BOUND at cycle t, entry l
            if mode == CATCHUP and not cu:
                ev.append((t, "resume", l, 1, len(main)))
                h.resumed(t)
                t, mode, l = T.resume_bound(t), MAIN, l_old
                continue
            if mode == CATCHUP and l == l_old:
                n = len(cu)
                ev.append((t + n + 1, "merge", l, 1, len(main) + n))
                h.merged(t + n + 1)
                main += cu
                cu = []
                hold, mode = True, MAIN
                t = T.merge_bound(t, n)
                continue
            batch = main if mode == MAIN else cu
            ctx = 0 if mode == MAIN else 1
            b = len(batch)
            d = t + 1
            p = d + 1
            if mode == MAIN and not hold and T.asks(l):
                rids = h.decide_boundary(d, l)
                if rids:
                    ev.append((d + ANSWER_CYCLES + len(rids) + 1, "accept", l, 0, len(rids)))
                    cu, l_old, mode, l = list(rids), l, CATCHUP, 0
                    t = T.start_bound(d, len(rids))
                    continue
                p += ANSWER_CYCLES
            ev.append((p, "layer_start", l, ctx, b))
            h.layer_start(p, l, b)
            ld = p + 1 + int(T.compute[b, l])
            ev.append((ld, "layer_done", l, ctx, b))
            if T.backbone[l] and mode == MAIN:
                hold = False
            eid = T.exit_id[l]
            if eid is not None:
                final = prog.entries[l].final
                s = ld + 1
                keep = []
                for r in batch:
                    if final or ex[r] == eid:
                        s += T.exit_leave[l]
                        h.result(s - 2, r, eid)
                    else:
                        s += T.exit_stay[l]
                        keep.append(r)
                x = s - 1
                ev.append((x, "exit", l, ctx, b - len(keep)))
                h.exit_test(x, l, eid, b - len(keep))
                batch[:] = keep
                nxt = x + 1
            else:
                nxt = ld + 1
            if mode == MAIN and not main:
                ev.append((nxt, "idle", l, 0, 0))
                mode, l, hold = IDLE, 0, False
                c = nxt + 1
                h.idle(c)
                continue
            l += 1
            t = nxt + 1
        h.finish_run(max(t, h.last) + 1)
        return max(t, h.last) + 1
