"""A scheduler from :mod:`fluidnpu.sched` serving a request trace on the NPU through the
host driver: the code ``fluidnpu board run`` runs over UARTBone and the simulated board
(:mod:`fluidnpu.hw.tb.board_tb`) runs over Wishbone cycles in cocotb.

The host protocol is the co-simulation's (docs/cosim.md) carried over registers: the
FBE runs in step mode; at each decision point it waits for the host, which drains the
RESULT and EVENT queues (each item stamped with the NPU cycle it happened at), hands
them to the :class:`~fluidnpu.sim.cosim.host.Host` in cycle order, asks the scheduler
(``decide_boundary``), stages the chosen samples (ADMIT) and answers with PREEMPT (their
number, 0 to continue). While the FBE is idle the host asks ``decide_idle`` once the
NPU's ``CYCLE`` has reached the next arrival (or the scheduler's wake-up). Every cycle
is the NPU's own counter, so the metrics are the NPU's; unlike the cocotb co-simulation,
the host's own latency (a few bus cycles per register access in simulation, about
0.1 ms per access over a 1 Mbaud UART) is part of them: a decision is taken at the
cycle the host reads, not at the cycle the FBE asked.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fluidnpu.hw.fbe_layout import EVENT_NAMES, MODE_IDLE, REFUSE_NAMES

from .driver import DriverError, NpuDriver

__all__ = ["ServeRun", "serve_requests", "run_on_transport"]

_WRAP = 1 << 32


@dataclass
class ServeRun:
    host: object                                  #: the Host after the run (per-request records)
    events: list = field(default_factory=list)    #: (cycle, kind, layer, ctx, count), cycles from cycle0
    mem: bytes = b""                              #: the memory read back
    cycles: int = 0                               #: NPU cycles from cycle0 to the end
    accesses: int = 0                             #: register accesses of the driver
    decisions: int = 0                            #: scheduler calls answered (idle and boundary)


class _Clock:
    """The NPU's 32-bit CYCLE unwrapped: cycles since ``cycle0`` (polled at least once per
    2**32 cycles, 86 s at 50 MHz)."""

    def __init__(self, drv: NpuDriver):
        self.drv = drv
        self.raw0 = self.raw = drv.cycle()
        self.now = 0

    def read(self) -> int:
        raw = self.drv.cycle()
        self.now += (raw - self.raw) % _WRAP
        self.raw = raw
        return self.now

    def stamp(self, raw: int) -> int:
        """An event's stamp (raw CYCLE, at or before the last read) as cycles since cycle0."""
        return self.now - ((self.raw - raw) % _WRAP)


def serve_requests(drv: NpuDriver, host, *, entries, table, res_addr: int, res_shift: int, x_addr,
                   mem_image: bytes, read_back: tuple[int, int], max_cycles: int,
                   progress=None) -> ServeRun:
    """Serve ``host``'s requests (request ``r`` is sample tag ``r`` with its input at
    ``x_addr[r]``); raises :class:`DriverError` on a protocol surprise or after
    ``max_cycles`` NPU cycles, :class:`~fluidnpu.sim.cosim.host.CosimError` when the
    scheduler asks for something the FBE cannot do or the NPU contradicts the host."""
    drv.probe()
    drv.check_errors()
    drv.write_mem(0, mem_image)
    drv.load_program(entries)
    drv.load_table(table)
    drv.set_control(res_addr, res_shift, True)          # step mode: the FBE waits at decisions
    drv.check_errors()
    fb = drv.fbe()
    if fb["mode"] != MODE_IDLE or fb["staged"] != 0:
        raise DriverError(f"FBE = {fb}: expected idle with nothing staged before the first request")
    b_max = fb["free"]
    clk = _Clock(drv)
    events: list[tuple] = []
    carry: list[tuple] = []
    answered_at = None          # cycle of the last boundary answer (None: no answer outstanding)
    starting = False            # a start was offered; no accept seen yet
    decisions = 0
    polls = 0
    t_report = time.monotonic()

    def drain(all_: bool) -> None:
        """Pop every result and event; hand the host those stamped before the drain began
        (all of them when the FBE is waiting or idle: nothing new can come), in cycle order,
        a result before an event of the same cycle; the rest wait for the next drain."""
        nonlocal answered_at, starting
        start = clk.read()
        raw = []
        while True:
            st = drv.status()
            r = drv.pop("RESULT", st)
            e = drv.pop("EVENT", st)
            if r is None and e is None:
                break
            if r is not None:
                raw.append((r["cycle"], 0, "result", r))
            if e is not None:
                raw.append((e["cycle"], 1, "event", e))
        clk.read()
        items = carry + [(clk.stamp(c), k, what, d) for c, k, what, d in raw]
        carry.clear()
        items.sort(key=lambda t: (t[0], t[1]))
        for it in items:
            c, _, what, d = it
            if not all_ and c >= start - 8:
                carry.append(it)
                continue
            if what == "result":
                host.result(c, d["tag"], d["exit_id"])
                continue
            k = EVENT_NAMES[d["kind"]]
            events.append((c, k, d["layer"], d["ctx"], d["count"]))
            if k == "layer_start":
                host.layer_start(c, d["layer"], d["count"])
                if answered_at is not None and c > answered_at:
                    answered_at = None
            elif k == "exit":
                host.exit_test(c, d["layer"], d["info"], d["count"])
            elif k == "merge":
                host.merged(c)
            elif k == "resume":
                host.resumed(c)
            elif k == "accept":
                starting = False
            elif k == "idle":
                host.idle(c + 1)
            elif k == "refuse":
                raise DriverError(f"EVENT refuse at cycle {c}: the FBE refused a request of {d['count']} "
                                  f"({REFUSE_NAMES.get(d['info'], d['info'])})")

    def stage(rids) -> None:
        for r in rids:
            drv.admit(r, x_addr[r], wait=True)

    while True:
        polls += 1
        fb = drv.fbe()
        waiting = fb["mode"] != MODE_IDLE and fb["decide"]
        idle = fb["mode"] == MODE_IDLE
        drain(waiting or (idle and not starting))
        now = clk.read()
        if now > max_cycles:
            raise DriverError(f"{sum(1 for s in host.state if s >= 3)} of {host.n} requests done or dropped after "
                              f"{now} cycles (max_cycles = {max_cycles}); FBE = {fb}")
        if waiting and answered_at is None:
            rids = host.decide_boundary(now, fb["layer"])
            stage(rids)
            drv.preempt(len(rids), wait=True)
            answered_at = now
            decisions += 1
        elif idle and not starting and not carry:
            consult = host.next_consult()
            if consult is None:
                if host.n_queued == 0 and host.next_arrival() is None:
                    break
            elif now >= consult:
                rids = host.decide_idle(now)
                decisions += 1
                if rids:
                    stage(rids)
                    drv.preempt(len(rids), wait=True)
                    starting = True
        if polls % 64 == 0:
            drv.check_errors()
        if progress is not None and time.monotonic() - t_report > 0.5:
            t_report = time.monotonic()
            progress(now, sum(1 for s in host.state if s >= 3))
    end = clk.read()
    host.finish_run(end + 1)
    final = drv.fbe()
    if final["free"] != b_max:
        raise DriverError(f"FBE.FREE = {final['free']} after the run: expected all {b_max} slots free")
    drv.check_errors()
    mem = drv.read_mem(*read_back)
    return ServeRun(host=host, events=events, mem=mem, cycles=end + 1, accesses=drv.accesses, decisions=decisions)


def run_on_transport(s, transport, regs, *, engine: str, max_cycles: int | None = None,
                     timeout_cycles: int = 200_000, progress=None):
    """Serve the co-simulation setup ``s`` (:func:`fluidnpu.sim.cosim.run.prepare`) on the
    NPU behind ``transport`` with the scheduler it names; returns a
    :class:`~fluidnpu.sim.cosim.run.RunRecord` (metrics as ``fluidnpu cosim`` prints them)
    whose ``extra["logits_ok"]`` counts the requests whose logits were read back equal to
    the numpy reference (a mismatch raises)."""
    import numpy as np

    from fluidnpu.sim.cosim.run import _check_logits, _record, make_host
    t0 = time.perf_counter()
    drv = NpuDriver(transport, regs, timeout_cycles=timeout_cycles)
    host = make_host(s)
    if max_cycles is None:
        b1 = s.timing.latency_table().batch1_latency_cycles()
        max_cycles = int(s.arrival_cycle[-1]) + 4 * len(s.requests) * (b1 + 64) + 10_000
    image = np.asarray(s.mem_image, dtype=np.uint8)
    res = s.prog.res_addr
    # only the result area comes back (the rest is the image written: weights, inputs)
    run = serve_requests(drv, host, entries=s.prog.packed_entries(), table=s.prog.table_words(s.policies),
                         res_addr=res, res_shift=s.prog.res_shift,
                         x_addr=[s.prog.input_area(r) for r in range(len(s.requests))],
                         mem_image=image.tobytes(), read_back=(res, len(image) - res), max_cycles=max_cycles,
                         progress=progress)
    rec = _record(s, run.host, engine, run.events, time.perf_counter() - t0,
                  {"dut_cycles": run.cycles, "accesses": run.accesses, "decisions": run.decisions})
    mem = image.copy()
    mem[res:] = np.frombuffer(run.mem, dtype=np.uint8)
    rec.extra["logits_ok"] = _check_logits(s, mem, run.host)
    return rec
