"""cocotb bench of the co-simulation: a :class:`~.host.Host` (a scheduler from
:mod:`fluidnpu.sched`) drives the RTL NPU with its FBE.

The run directory (env ``FLUIDNPU_RUN_DIR``, written by :mod:`.rtl`) holds
``setup.pickle``: the hardware configuration, program entries, control table, result
areas, memory image and timing, the input address of every request, ``max_cycles``, and
the :class:`~.host.Host` before the run. The bench answers the FBE by the host
protocol of docs/cosim.md: the FBE runs in step mode; at every decision point (and
while idle, at the cycles the host asks for) the host decides in that cycle; the
bench then stages the chosen samples on ``admit``, one per cycle, and offers
``preempt`` with their number (or 0: continue). Results and events go to the host with
their cycle stamps. At the end ``result.pickle`` holds the host (per-request records,
statistics), the event log and the bench's own checks.
"""
from __future__ import annotations

import os
import pickle
from collections import deque
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from fluidnpu.hw.fbe_layout import (EVENT_NAMES, MODE_IDLE, REFUSE_NAMES, event_layout, result_layout,
                                    status_layout, unpack)
from fluidnpu.hw.tb.fbe_io import configure_fbe, read_int, reset_fbe
from fluidnpu.hw.tb.memory import MemoryModel

CLOCK_NS = 10


class CosimBenchError(AssertionError):
    """The RTL broke the host protocol (a refused request, X on an output, a timeout)."""


def _int(sig, what):
    return read_int(sig, what, CosimBenchError)


@cocotb.test()
async def cosim(dut):
    run_dir = Path(os.environ["FLUIDNPU_RUN_DIR"])
    S = pickle.loads((run_dir / "setup.pickle").read_bytes())
    cfg, host, xaddr = S["cfg"], S["host"], S["x_addr"]
    mem = S["mem"]
    t = S["timing"]
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    await reset_fbe(dut)
    await configure_fbe(dut, cfg, S["entries"], S["table"], S["res_addr"], S["res_shift"], step=1)
    model = MemoryModel(dut, mem, mem_bytes=cfg.mem_bytes, addr_width=cfg.addr_width, latency=t.latency,
                        interval=t.interval, backpressure=t.backpressure, seed=t.seed, wr_latency=t.wr_latency,
                        depth=t.depth, wr_depth=t.wr_depth)
    model.start()
    rl, evl, stl = result_layout(cfg), event_layout(cfg), status_layout(cfg)
    edge = RisingEdge(dut.clk)
    await edge
    await ReadOnly()
    cycle0 = _int(dut.cycle, "cycle") + 1     # the DUT's cycle count at the loop's cycle 0
    events = []
    admits = deque()          # (tag, x_addr) to stage, then `offer` on preempt
    offer = None
    answered = False          # the current DEC has its answer
    was_idle = True
    starting = False          # a start was offered; the FBE has not left IDLE yet
    consult = host.next_consult()
    max_cycles = S["max_cycles"]
    tw = dut.cycle
    prog_file = run_dir / "progress"
    next_report = 0
    cyc = -1
    while True:
        await edge
        cyc += 1
        if cyc >= next_report:            # for the caller's progress bar: cycle, requests done or dropped
            next_report = cyc + 2000
            done = sum(1 for st in host.state if st >= 3)
            (run_dir / "progress.tmp").write_text(f"{cyc} {done}\n")
            (run_dir / "progress.tmp").replace(prog_file)
        if admits:
            tag, xa = admits[0]
            dut.admit__valid.value = 1
            dut.admit__payload.value = tag | (xa << cfg.tag_width)
            dut.preempt__valid.value = 0
        else:
            dut.admit__valid.value = 0
            dut.preempt__valid.value = int(offer is not None)
            dut.preempt__payload.value = offer or 0
        await ReadOnly()
        if admits:
            if not _int(dut.admit__ready, "admit.ready"):
                raise CosimBenchError(f"cycle {cyc}: the staging FIFO refused a sample")
            admits.popleft()
        elif offer is not None and _int(dut.preempt__ready, "preempt.ready"):
            offer = None
        if _int(dut.results__valid, "results.valid"):
            r = unpack(rl, _int(dut.results__payload, "results.payload"))
            host.result(r["cycle"] - cycle0, r["tag"], r["exit_id"])
        if _int(dut.events__valid, "events.valid"):
            e = unpack(evl, _int(dut.events__payload, "events.payload"))
            k = EVENT_NAMES[e["kind"]]
            c = e["cycle"] - cycle0
            events.append((c, k, e["layer"], e["ctx"], e["count"]))
            if k == "layer_start":
                host.layer_start(c, e["layer"], e["count"])
            elif k == "exit":
                host.exit_test(c, e["layer"], e["info"], e["count"])
            elif k == "merge":
                host.merged(c)
            elif k == "resume":
                host.resumed(c)
            elif k == "refuse":
                raise CosimBenchError(f"cycle {c}: the FBE refused a request of {e['count']} "
                                      f"({REFUSE_NAMES.get(e['info'], e['info'])})")
        st = unpack(stl, _int(dut.status, "status"))
        if st["mode"] == MODE_IDLE:
            if not was_idle:
                host.idle(cyc)
                was_idle = True
                consult = cyc
            if offer is None and not admits and consult is not None and cyc >= consult:
                if cyc != consult:
                    raise CosimBenchError(f"cycle {cyc}: the host wanted to decide at cycle {consult}")
                rids = host.decide_idle(cyc)
                if rids:
                    admits.extend((r, xaddr[r]) for r in rids)
                    offer = len(rids)
                    consult = None
                    starting = True
                else:
                    consult = host.next_consult()
        else:
            was_idle = starting = False
            if not st["decide"]:
                answered = False
            elif not answered:
                rids = host.decide_boundary(cyc, st["layer"])
                admits.extend((r, xaddr[r]) for r in rids)
                offer = len(rids)
                answered = True
        if was_idle and not starting and offer is None and not admits:
            if consult is None and host.n_queued == 0 and host.next_arrival() is None:
                break
            # nothing happens before the next consult: skip ahead (the FIFOs are empty)
            if consult is not None and consult > cyc + 2 and not _int(dut.events__valid, "events.valid") \
                    and not _int(dut.results__valid, "results.valid"):
                k = consult - cyc - 1
                await ClockCycles(dut.clk, k)
                cyc += k
        if cyc > max_cycles:
            raise CosimBenchError(f"timeout after {max_cycles} cycles: {host.n_queued} requests queued, "
                                  f"status {st}")
    for _ in range(4 * t.latency + 8):          # let the last writes land; the last events come out
        await edge
        await ReadOnly()
        if _int(dut.events__valid, "events.valid"):
            e = unpack(evl, _int(dut.events__payload, "events.payload"))
            k = EVENT_NAMES[e["kind"]]
            if k != "idle":
                raise CosimBenchError(f"event {k} after the end of the run")
            events.append((e["cycle"] - cycle0, k, e["layer"], e["ctx"], e["count"]))
    final = unpack(stl, _int(dut.status, "status"))
    dut_cycles = _int(tw, "cycle") - cycle0
    await edge
    model.stop()
    host.finish_run(cyc + 1)
    if final["free"] != cfg.b_max:
        raise CosimBenchError(f"end: {final['free']} slots free, expected {cfg.b_max}")
    out = {"host": host, "events": events, "cycles": cyc + 1, "dut_cycles": dut_cycles, "mem": mem,
           "mem_stats": model.stats, "mem_errors": model.errors}
    tmp = run_dir / "result.pickle.tmp"
    tmp.write_bytes(pickle.dumps(out))
    tmp.replace(run_dir / "result.pickle")
    if model.errors:
        raise CosimBenchError("memory model: " + "; ".join(model.errors[:3]))
