"""The simulated board: the host driver (fluidnpu.board) runs an early-exit network on the
Wishbone-wrapped NPU with its FBE (``fluidnpu_npu_wb``) through its registers only, over
the cocotb transport; every sample bit-exact with the numpy reference, and the cycles
compared with the direct-port bench on the same network and memory timing."""
from __future__ import annotations

import numpy as np
import pytest

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.runner import MemTiming
from fluidnpu.sim.netrun import check_run, make_job
from fluidnpu.sim.network import compile_network, random_network, reference_sample

#: as tests/test_fbe.py's SMALL: 4 PEs x 4 lanes, 4-byte port, 4 slots
SMALL = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=1024, w_buf_elems=512, mem_bytes=4, b_max=4,
                 net_entries=16, max_classes=8)
MEM = MemTiming(latency=5)


def _network(seed, n):
    rng = np.random.default_rng(seed)
    model, weights, thr, crit = random_network(SMALL, rng, classes=int(rng.integers(3, SMALL.max_classes + 1)))
    prog = compile_network(SMALL, model, weights, thr, crit, n_inputs=n, tag_space=n)
    xs = [rng.integers(-128, 128, prog.input_shape) for _ in range(n)]
    crit_names = [("max" if c == 1 else "margin") for c in prog.criteria]
    refs = [reference_sample(SMALL, model, weights, prog.thresholds, crit_names, x) for x in xs]
    return prog, xs, refs


def _layer_cycles(events):
    """(layer, B) -> cycles from layer_start to layer_done, for each layer run."""
    out, start = [], {}
    for e in events:
        if e["kind"] == "layer_start":
            start[e["ctx"]] = e
        elif e["kind"] == "layer_done" and e["ctx"] in start:
            s = start.pop(e["ctx"])
            out.append(((s["layer"], s["count"]), e["cycle"] - s["cycle"]))
    return out


@pytest.mark.rtl
def test_host_driver_runs_a_network_bit_exact_and_close_to_the_direct_port():
    """Four samples at cycle 0, one batch: exits, classes, top-2 and logits equal the
    reference (check_run, the direct-port bench's own check); the same layers run at the
    same batch sizes as on the direct-port bench, each a few cycles longer (the Wishbone
    master's extra cycle per read answer), never shorter."""
    from fluidnpu.hw.bus_runner import run_network_wishbone
    from fluidnpu.hw.fbe_runner import run_network_job
    prog, xs, refs = _network(11, 4)
    job = make_job(prog, xs, [0] * 4)
    bus = run_network_wishbone(job, sim="icarus", mem=MEM)
    outs = check_run(prog, refs, bus.run)
    assert sorted(o.index for o in outs) == [0, 1, 2, 3]
    assert bus.run.final_status["mode"] == 0 and bus.run.final_status["free"] == SMALL.b_max
    kinds = [e["kind"] for e in bus.run.events]
    assert kinds.count("accept") == 1 and "refuse" not in kinds       # one preempt of all four
    # the direct-port bench, its one preempt of 4 once the samples are staged
    direct = run_network_job(make_job(prog, xs, [0] * 4, sched={"mode": "schedule", "preempts": [[10, 4]]}),
                             sim="icarus", mem=MEM)
    d_outs = check_run(prog, refs, direct)
    assert [(o.exit, o.cls) for o in sorted(outs, key=lambda o: o.index)] == \
        [(o.exit, o.cls) for o in sorted(d_outs, key=lambda o: o.index)]
    lb, ld = _layer_cycles(bus.run.events), _layer_cycles(direct.events)
    assert [k for k, _ in lb] == [k for k, _ in ld] and lb
    for (key, cb), (_, cd) in zip(lb, ld):
        assert cd <= cb <= 1.1 * cd + 10, f"layer {key}: {cb} cycles through the bus, {cd} direct"


@pytest.mark.rtl
def test_host_driver_catch_up_and_merge_bit_exact():
    """Eight samples in two waves: the second wave is admitted while the first batch runs
    (a catch-up), merged or resumed; every sample bit-exact, each reported once, every slot
    freed."""
    from fluidnpu.hw.bus_runner import run_network_wishbone
    prog, xs, refs = _network(5, 8)
    job = make_job(prog, xs, [0] * 4 + [300] * 4)
    bus = run_network_wishbone(job, sim="icarus", mem=MEM)
    outs = check_run(prog, refs, bus.run)
    assert len(outs) == 8
    kinds = [e["kind"] for e in bus.run.events]
    assert kinds.count("accept") >= 2 and ("merge" in kinds or "resume" in kinds), kinds
    assert bus.run.final_status["free"] == SMALL.b_max


#: the small NPU the `fluidnpu network` tests run digits on (tests/test_network_cli.py)
DIGITS_CFG = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=4096, w_buf_elems=2048, b_max=8, net_entries=8,
                      max_classes=16, mem_bytes=4)


@pytest.mark.rtl
def test_digits_through_the_host_driver():
    """The shipped digits CNN, test images 12..19 (image 16 takes the second exit) in two
    waves of four: through the host driver on the wrapped NPU, exit and class of every
    image equal the digits module's own integer reference, and exits, classes, logits and
    top-2 equal the FBE reference (check_run)."""
    from fluidnpu.hw.bus_runner import run_network_wishbone
    from fluidnpu.sim.workloads.digits import exit_decisions, integer_logits
    from fluidnpu.sim.workloads.weights import load_network
    net = load_network("digits")
    l0 = net.model.layers[0]
    x = np.asarray(net.weights["test:x"])[12:20]
    xs = list(x.reshape(len(x), l0.r, l0.p))
    prog = compile_network(DIGITS_CFG, net.model, net.weights, net.thresholds, net.criteria,
                           n_inputs=len(xs), tag_space=len(xs))
    crit = [("max" if c == 1 else "margin") for c in prog.criteria]
    refs = [reference_sample(DIGITS_CFG, prog.model, prog.weights, prog.thresholds, crit, s) for s in xs]
    bus = run_network_wishbone(make_job(prog, xs, [0] * 4 + [1500] * 4), sim="icarus", mem=MEM)
    outs = sorted(check_run(prog, refs, bus.run), key=lambda o: o.index)
    ex, pred = exit_decisions(integer_logits(net.model, net.weights, x), net.thresholds, net.criteria)
    assert [o.exit for o in outs] == ex.tolist() and [o.cls for o in outs] == pred.tolist()
    assert len(set(ex.tolist())) == 2
    kinds = [e["kind"] for e in bus.run.events]
    assert kinds.count("accept") >= 2 and ("merge" in kinds or "resume" in kinds), kinds


@pytest.mark.rtl
def test_scheduler_serves_digits_on_the_simulated_board():
    """``fluidnpu board run``'s code past the transport (fluidnpu.board.serve.run_on_transport)
    on the simulated board: the fluid scheduler serves the first requests of the digits
    scenario through the CSRs in step mode; every request is served at its reference exit,
    its logits read back bit-exact, with catch-ups decided by the scheduler."""
    from fluidnpu.sim.cosim.board import run_board_sim
    from fluidnpu.sim.cosim.run import prepare
    s = prepare(None, "fluid", requests=10, seed=1, mem=MemTiming(latency=5))
    assert s.cfg == DIGITS_CFG
    rec = run_board_sim(s, "icarus", mem=MEM)
    n = len(s.requests)
    assert rec.extra["logits_ok"] == n
    assert (rec.finish_cycle > s.arrival_cycle).all()
    assert rec.result.exit.tolist() == s.exits.tolist()
    assert rec.result.preemptions >= 1 and rec.extra["decisions"] >= n // 2
    accepted = [e[4] for e in rec.events if e[1] == "accept"]
    assert sum(accepted) == n                                   # every request admitted once
    assert any(e[1] in ("merge", "resume") for e in rec.events)
