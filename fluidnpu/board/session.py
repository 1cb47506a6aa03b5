"""The host loop that runs a network's samples on the NPU through :class:`~.driver.NpuDriver`:
load the memory image, program, control table and result area; admit each sample when
its arrival cycle has come; ask the FBE to take staged samples (a greedy scheduler: once
every sample that has arrived is staged, all it can, when none of its requests is
unanswered); pop every result
and event until all samples are reported and the FBE is idle.

Arrival cycles count from ``cycle0``, the NPU's ``CYCLE`` right after loading. Everything
goes through registers, so the host's own speed (a few bus cycles per register access)
is part of the timing: a sample is admitted some cycles after its arrival, and the FBE
waits when its event queue (4 deep) is full until the host pops it (docs/board.md).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fluidnpu.hw.fbe_layout import EVENT_NAMES     # event kind codes (docs/fbe.md)

from .driver import DriverError, NpuDriver

__all__ = ["HostRun", "run_job"]

_WRAP = 1 << 32


@dataclass
class HostRun:
    results: list[dict]              #: RESULT windows in the order popped (cycle: NPU cycle)
    events: list[dict]               #: EVENT windows in order, ``kind`` as a name
    cycle0: int                      #: NPU cycle at which arrival cycle 0 began
    end: int                         #: NPU cycles from cycle0 to the last result
    final_fbe: dict                  #: the FBE window at the end
    accesses: int                    #: register accesses of the whole run (loading included)
    max_b: int                       #: most samples in flight, as sampled by the host's FBE reads
    mem: bytes = b""                 #: the memory read back (``read_back``)
    admitted_at: dict = field(default_factory=dict)   #: tag -> cycle (from cycle0) its ADMIT was pushed


def run_job(drv: NpuDriver, *, entries, table, res_addr: int, res_shift: int, arrivals,
            mem_image: bytes | None = None, read_back: tuple[int, int] | None = None,
            max_cycles: int = 2_000_000) -> HostRun:
    """Run the samples ``arrivals`` (``(cycle, tag, x_addr)``) to completion; raises
    :class:`DriverError` on an ERROR flag, a protocol surprise or after ``max_cycles``."""
    drv.probe()
    drv.check_errors()
    if mem_image is not None:
        drv.write_mem(0, mem_image)
    drv.load_program(entries)
    drv.load_table(table)
    drv.set_control(res_addr, res_shift, False)
    drv.check_errors()
    fb = drv.fbe()
    if fb["mode"] != 0 or fb["staged"] != 0:
        raise DriverError(f"FBE = {fb}: expected idle with nothing staged before the first sample")
    b_max = fb["free"]
    queue = deque(sorted((int(c), int(t), int(a)) for c, t, a in arrivals))
    n = len(queue)
    host: deque = deque()
    results, events, done = [], [], set()
    admitted_at: dict[int, int] = {}
    n_admitted = n_accepted = pre_sent = pre_answered = 0
    max_b = 0
    cycle0 = drv.cycle()
    now = 0
    polls = 0
    while True:
        polls += 1
        if queue or polls % 64 == 0:
            now = (drv.cycle() - cycle0) % _WRAP
            if now > max_cycles:
                raise DriverError(f"{len(done)} of {n} samples reported after {now} cycles (max_cycles = "
                                  f"{max_cycles}); STATUS = {drv.status():#x}, FBE = {drv.fbe()}")
        while queue and queue[0][0] <= now:
            host.append(queue.popleft()[1:])
        st, rs, es = drv.poll()
        for r in rs:
            if r["tag"] in done:
                raise DriverError(f"RESULT: tag {r['tag']} reported twice")
            done.add(r["tag"])
            results.append(r)
        for e in es:
            e = dict(e, kind=EVENT_NAMES[e["kind"]])
            events.append(e)
            if e["kind"] == "accept":
                n_accepted += e["count"]
                pre_answered += 1
            elif e["kind"] == "refuse":
                pre_answered += 1
        if len(done) == n and not queue and not host:
            break
        if host and not drv.pending("ADMIT", st):
            tag, xa = host.popleft()
            drv.admit(tag, xa, status=st)
            admitted_at[tag] = (drv.cycle() - cycle0) % _WRAP
            n_admitted += 1
        # greedy: once every arrived sample is staged, ask for all the FBE can take
        if n_admitted > n_accepted and not host and pre_sent == pre_answered \
                and not drv.pending("PREEMPT", st) and not drv.pending("ADMIT", st):
            fb = drv.fbe()
            max_b = max(max_b, fb["b_act"] + (fb["b_old"] if fb["mode"] == 2 else 0))
            room = min(fb["staged"], fb["free"])
            if room > 0:
                drv.preempt(room, status=st)
                pre_sent += 1
        if polls % 256 == 0:
            drv.check_errors()
    end = max(((r["cycle"] - cycle0) % _WRAP for r in results), default=0)
    # the FBE goes idle after the last result; take the events up to its idle event
    start = drv.cycle()
    while not (events and events[-1]["kind"] == "idle" and drv.fbe()["mode"] == 0):
        _, _, es = drv.poll()
        events += [dict(e, kind=EVENT_NAMES[e["kind"]]) for e in es]
        if (drv.cycle() - start) % _WRAP > drv.timeout_cycles:
            raise DriverError(f"FBE = {drv.fbe()}: not idle {drv.timeout_cycles} cycles after the last result")
    final = drv.fbe()
    if final["free"] != b_max:
        raise DriverError(f"FBE.FREE = {final['free']} after the run: expected all {b_max} slots free")
    drv.check_errors()
    mem = drv.read_mem(*read_back) if read_back else b""
    return HostRun(results=results, events=events, cycle0=cycle0, end=end, final_fbe=final,
                   accesses=drv.accesses, max_b=max_b, mem=mem, admitted_at=admitted_at)
