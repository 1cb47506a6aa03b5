"""cocotb bench of the NPU with its Fluid Batching Engine (``fluidnpu_fbe``).

The run directory (env ``FLUIDNPU_RUN_DIR``, written by :mod:`fluidnpu.hw.fbe_runner`)
holds ``params.json``::

    {"cfg": {...}, "entries": ["0x..", ...], "table": [[b, lid, word], ...],
     "res_addr": int, "res_shift": int, "mem_file": "mem.npy", "out_file": "out.npy",
     "timing": {...MemTiming...},
     "arrivals": [[cycle, tag, x_addr], ...],          # sorted by cycle
     "sched": {"mode": "greedy"|"schedule", "seed": int, "odd": float, "gap": int,
               "preempts": [[cycle, n], ...]},
     "reset_at": null | cycle, "max_cycles": int}

After reset the bench writes the program and the control table through their ports,
then runs the samples. Cycle ``n`` is the memory model's cycle ``n``. Samples that
arrived queue in the host and are offered on ``admit`` in order. The test scheduler
(``greedy``) offers ``preempt`` with B_incr chosen at random from the staged samples and
free slots (with probability ``odd`` an odd request instead: 0, or more than staged or
free), waiting a random 0..``gap`` cycles between requests; ``schedule`` offers the given
``[cycle, n]`` requests in order instead, then goes on greedily (without odd requests)
until every sample is done. With ``reset_at`` the bench pulses reset at that
cycle, checks the NPU came back idle with every slot free, restarts the memory model and
resubmits the samples that had no result. With ``"step": 1`` the FBE runs in step mode
and the greedy scheduler answers every boundary (``status.decide``): a random B_incr or
0 (continue).

Results (``result.json``): every result and event with its cycle, the samples lost to a
reset, the invariant violations seen by the bench, ``max_b`` and the memory after the
run in ``out_file``. The test fails on a timeout or a protocol error; checking results
against the reference is the caller's job (:func:`fluidnpu.hw.fbe_runner.check_network`).
"""
from __future__ import annotations

import json
import random
from collections import deque

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.fbe_layout import EVENT_NAMES, MODE_IDLE, event_layout, result_layout, status_layout, unpack
from fluidnpu.hw.tb.common import load_params
from fluidnpu.hw.tb.fbe_io import RESET_CYCLES, configure_fbe, read_int, reset_fbe
from fluidnpu.hw.tb.memory import MemoryModel

CLOCK_NS = 10


class BenchError(AssertionError):
    """The NPU misbehaved (timeout, X on an output, a protocol rule)."""


RUN_DIR, P = load_params()


def _int(sig, what):
    return read_int(sig, what, BenchError)


@cocotb.test()
async def network(dut):
    cfg = HwConfig(**P["cfg"])
    mem = np.load(RUN_DIR / P["mem_file"]).astype(np.uint8).ravel().copy()
    t = P["timing"]
    sched = P["sched"]
    rng = random.Random(sched.get("seed", 0))
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    await reset_fbe(dut)
    await configure_fbe(dut, cfg, P["entries"], P["table"], P["res_addr"], P["res_shift"],
                        P.get("step", 0))

    def new_model():
        m = MemoryModel(dut, mem, mem_bytes=cfg.mem_bytes, addr_width=cfg.addr_width,
                        latency=t["latency"], interval=t["interval"], backpressure=t["backpressure"],
                        seed=t["seed"], wr_latency=t.get("wr_latency"), depth=t.get("depth"),
                        wr_depth=t.get("wr_depth"))
        m.start()
        return m

    model = new_model()
    rl, evl, stl = result_layout(cfg), event_layout(cfg), status_layout(cfg)
    arrivals = deque(tuple(a) for a in P["arrivals"])
    preempts = deque(tuple(x) for x in sched.get("preempts", []))
    n_samples = len(arrivals)
    host = deque()                      # arrived, not yet admitted: (tag, x_addr)
    results, events, violations, lost = [], [], [], []
    done_tags = set()
    in_flight = {}                      # tag -> x_addr, admitted and without result
    edge = RisingEdge(dut.clk)
    pre_n = None                        # B_incr being offered
    next_pre = 0
    max_b = 0
    reset_at = P.get("reset_at")
    max_cycles = P["max_cycles"]
    await edge
    await ReadOnly()
    cycle0 = _int(dut.cycle, "cycle")      # DUT cycle of bench cycle 0
    cyc = -1
    while True:
        await edge
        cyc += 1
        if reset_at is not None and cyc >= reset_at:
            reset_at = None
            model.stop()
            await reset_fbe(dut)
            await ReadOnly()
            st = unpack(stl, _int(dut.status, "status"))
            if st["mode"] != MODE_IDLE or st["free"] != cfg.b_max or st["staged"] != 0:
                violations.append(f"after reset: status {st}, expected idle with {cfg.b_max} free slots")
            lost = sorted(in_flight)
            for tg in reversed(lost):
                host.appendleft((tg, in_flight[tg]))
            in_flight.clear()
            pre_n = None
            await edge
            model = new_model()
            cyc += RESET_CYCLES + 1
            continue
        while arrivals and arrivals[0][0] <= cyc:
            _, tg, xa = arrivals.popleft()
            host.append((tg, xa))
        if host:
            dut.admit__valid.value = 1
            dut.admit__payload.value = host[0][0] | (host[0][1] << cfg.tag_width)
        else:
            dut.admit__valid.value = 0
        dut.preempt__valid.value = int(pre_n is not None)
        dut.preempt__payload.value = pre_n or 0
        await ReadOnly()
        if _int(dut.admit__valid, "admit.valid") and _int(dut.admit__ready, "admit.ready"):
            tg, xa = host.popleft()
            in_flight[tg] = xa
        taken = pre_n is not None and _int(dut.preempt__ready, "preempt.ready")
        if taken:
            pre_n = None
            next_pre = cyc + 1 + rng.randint(0, sched.get("gap", 0))
        if _int(dut.results__valid, "results.valid"):
            r = unpack(rl, _int(dut.results__payload, "results.payload"))
            results.append(r)
            if r["tag"] in done_tags:
                violations.append(f"cycle {cyc}: tag {r['tag']} reported twice")
            done_tags.add(r["tag"])
            in_flight.pop(r["tag"], None)
        if _int(dut.events__valid, "events.valid"):
            e = unpack(evl, _int(dut.events__payload, "events.payload"))
            e["kind"] = EVENT_NAMES[e["kind"]]
            events.append(e)
        s2 = unpack(stl, _int(dut.status, "status"))
        tot = s2["b_act"] + (s2["b_old"] if s2["mode"] == 2 else 0)
        max_b = max(max_b, tot)
        if tot > cfg.b_max:
            violations.append(f"cycle {cyc}: {tot} samples in flight > b_max = {cfg.b_max}")
        if len(done_tags) >= n_samples and s2["mode"] == MODE_IDLE and not host:
            break
        # what to offer on preempt from the next cycle on, from this cycle's settled status
        st = s2
        if pre_n is None and not taken:
            if sched["mode"] == "schedule" and preempts:
                if preempts[0][0] <= cyc:
                    pre_n = preempts.popleft()[1]
            elif P.get("step") and st["decide"] and st["mode"] != MODE_IDLE:
                room = min(st["staged"], st["free"])         # step mode: answer every boundary
                pre_n = rng.randint(1, room) if room and rng.random() < 0.5 else 0
            elif cyc >= next_pre and (st["staged"] > 0 or rng.random() < 0.01):
                room = min(st["staged"], st["free"])
                if sched["mode"] == "greedy" and rng.random() < sched.get("odd", 0.0):
                    pre_n = rng.choice([0, st["staged"] + 1, st["free"] + 1])
                elif room > 0:
                    pre_n = rng.randint(1, room)
            if pre_n is not None:
                pre_n = min(pre_n, (1 << len(dut.preempt__payload)) - 1)

        if cyc > max_cycles:
            raise BenchError(f"timeout: {len(done_tags)} of {n_samples} samples done after {max_cycles} "
                             f"cycles; status {s2}; host queue {len(host)}")
    # let the last writes land, then the final status
    for _ in range(4 * t["latency"] + 8):
        await edge
    await ReadOnly()
    final = unpack(stl, _int(dut.status, "status"))
    if final["free"] != cfg.b_max:
        violations.append(f"end: {final['free']} slots free, expected {cfg.b_max}")
    await edge
    model.stop()
    np.save(RUN_DIR / P["out_file"], mem)
    out = {"cycle0": cycle0, "results": results, "events": events, "violations": violations, "lost": lost,
           "max_b": max_b, "final_status": final, "cycles": cyc, "mem_stats": model.stats,
           "mem_errors": model.errors}
    tmp = RUN_DIR / "result.json.tmp"
    tmp.write_text(json.dumps(out))
    tmp.replace(RUN_DIR / "result.json")
    if model.errors:
        raise BenchError("memory model: " + "; ".join(model.errors[:3]))
