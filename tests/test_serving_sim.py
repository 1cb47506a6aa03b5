"""Serving simulator: invariants, reproducibility, exact small cases, exits, catch-up and merge."""
import numpy as np
import pytest

from fluidnpu.sched import CONTINUE, HOLD, Scheduler, names, preempt, start
from fluidnpu.sim.latency import LatencyTable
from fluidnpu.sim.serving import (MMPP2, Device, Poisson, Scenario, SimulationError, TraceReplay,
                                  generate_requests, run, slo_bases)
from fluidnpu.sim.serving.plan import ModelPlan
from fluidnpu.sim.workloads.model import EEModel, ExitHead, GemmLayer


def mk_model(n_layers=5, heads=(1, 3), probs=(0.4, 0.3, 0.3), name="m"):
    layers = tuple(GemmLayer(f"{name}l{i}", r=4, p=16, c=8) for i in range(n_layers))
    exits = tuple(ExitHead(a, (GemmLayer(f"{name}h{a}", 1, 8, 4),)) for a in heads)
    return EEModel(name, layers, exits, probs)


def mk_table(model, b_max=8, base=100, per=20, hbase=10, hper=2, clock=1.0, hw="rbatch", **kw):
    """Cycles = base + per*b per layer (+ layer index), heads hbase + hper*b; 1 MHz: 1 cycle = 1 us."""
    b = np.arange(b_max + 1)[:, None]
    lc = base + per * b + np.arange(len(model.layers))[None, :]
    hc = (hbase + hper * b) * np.ones((1, len(model.exits)), dtype=np.int64)
    return LatencyTable.for_model(model, hw, clock, lc, hc, **kw)


def scenario(model, rate=2000.0, duration=0.5, spiky=False, n_dev=3, slo_mult=5.0, **kw):
    devs = []
    for i in range(n_dev):
        arr = MMPP2((rate * 0.3, rate * 4), (0.05, 0.01)) if spiky and i % 2 == 0 else Poisson(rate)
        devs.append(Device(f"d{i}", model, arr, slo_mult=slo_mult))
    return Scenario(devices=tuple(devs), duration_s=duration, **kw)


def assert_conserved(res, reqs, model):
    """Every arrival finishes exactly once at its drawn exit or is dropped with a reason; NPU ops never overlap."""
    done = res.done
    assert np.array_equal(res.arrival, reqs.arrival)
    assert (done ^ (res.drop_reason != "")).all()
    assert np.array_equal(res.exit[done], reqs.exit[done]) and (res.exit[~done] == -1).all()
    assert (res.start[done] >= res.arrival[done]).all() and (res.finish[done] >= res.start[done]).all()
    log = np.array([(a, b) for a, b, *_ in res.op_log])
    assert (log[:, 1] >= log[:, 0]).all() and (log[1:, 0] >= log[:-1, 1] - 1e-12).all()
    # sample-ops executed == ops each finished request needs to reach its exit
    plan = ModelPlan(0, model, mk_table(model), 1.0)
    need = sum(plan.exit_op[e] + 1 for e in res.exit[done])
    assert sum((p1 - p0) * s for _, _, _, p0, p1, s, _ in res.op_log) == need


@pytest.mark.parametrize("spiky", [False, True])
@pytest.mark.parametrize("sched", ["fcfs", "dynamic", "clipper", "lazy", "prema", "fluid"])
def test_conservation_all_schedulers(sched, spiky):
    m = mk_model()
    tab = mk_table(m, preempt_cycles=5, merge_cycles=3)
    sc = scenario(m, spiky=spiky, rate=1500.0 if sched == "fcfs" else 3000.0)
    res = run(sc, sched, tab, seed=3, check=True)
    reqs = generate_requests(sc, 3, slo_bases(sc, tab))
    assert len(reqs) > 1000
    assert_conserved(res, reqs, m)
    assert res.done.all()
    s = res.summary()
    assert s["requests"] == len(reqs) and 0 < s["utilisation"] <= 1 + 1e-9
    assert sum(sum(v) for v in s["exits_per_head"].values()) == len(reqs)


def test_every_registered_scheduler_is_covered():
    assert set(names()) == {"fcfs", "dynamic", "clipper", "lazy", "prema", "fluid"}


def test_reproducible_and_shared_draws():
    m = mk_model()
    tab = mk_table(m)
    sc = scenario(m, spiky=True)
    a = run(sc, "fluid", tab, seed=5)
    b = run(sc, "fluid", tab, seed=5)
    assert np.array_equal(a.finish, b.finish) and a.summary() == b.summary()
    c = run(sc, "dynamic", tab, seed=5)
    # every scheduler sees the same arrivals and exits for a seed
    assert np.array_equal(a.arrival, c.arrival) and np.array_equal(a.exit, c.exit)
    assert not np.array_equal(a.finish, c.finish)
    d = run(sc, "fluid", tab, seed=6)
    assert a.arrival.size != d.arrival.size or not np.array_equal(a.arrival, d.arrival)


def lindley(reqs, plan):
    """Batch-1 FCFS by hand: start = max(arrival, previous finish); service = batch-1 ops to the exit."""
    fin, prev = [], 0.0
    for t, e in zip(reqs.arrival, reqs.exit):
        s = max(t, prev)
        prev = s + plan.cum[1][plan.exit_op[e] + 1]
        fin.append(prev)
    return np.array(fin)


def test_fcfs_exact_small_case():
    m = mk_model(n_layers=3, heads=(0,), probs=(0.0, 1.0))
    tab = mk_table(m)                       # b=1: layers 120,121,122 us; head 12 us -> 375 us
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0, 0.0001, 0.01)), slo_ms=1.0),), duration_s=1.0)
    res = run(sc, "fcfs", tab, check=True)
    assert res.finish.tolist() == pytest.approx([375e-6, 750e-6, 0.01 + 375e-6], abs=1e-12)
    assert res.start.tolist() == pytest.approx([0.0, 375e-6, 0.01], abs=1e-12)
    assert res.slo_met.tolist() == [True, True, True]


def test_fcfs_matches_lindley_recursion():
    m = mk_model()
    tab = mk_table(m)
    sc = scenario(m, rate=800.0, duration=1.0)
    res = run(sc, "fcfs", tab, seed=2)
    reqs = generate_requests(sc, 2, slo_bases(sc, tab))
    plan = ModelPlan(0, m, tab, 1.0)
    assert np.allclose(res.finish, lindley(reqs, plan), rtol=0, atol=1e-9)
    assert res.summary()["batch_start_hist"][1] == res.summary()["requests"]


def test_exits_leave_at_their_head_and_batch_shrinks():
    m = mk_model(n_layers=3, heads=(0,), probs=(0.5, 0.5))
    tab = mk_table(m)
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0,) * 8), slo_ms=10.0),), duration_s=1.0)
    res = run(sc, ("dynamic", {"max_batch": 8, "max_delay_ms": 0}), tab, seed=1, check=True)
    k = int((res.exit == 0).sum())
    assert 0 < k < 8
    t_head = (100 + 20 * 8) * 1e-6 + (10 + 2 * 8) * 1e-6      # layer 0 + head at b=8
    t_end = t_head + sum(100 + 20 * (8 - k) + i for i in (1, 2)) * 1e-6
    assert res.finish[res.exit == 0] == pytest.approx([t_head] * k)
    assert res.finish[res.exit == 1] == pytest.approx([t_end] * (8 - k))
    sizes = [s for *_, s, _ in res.op_log]
    assert sizes == [8, 8 - k]


def test_samples_leaving_at_a_head_cost_their_exit_leave_cycles():
    """Each sample that leaves at a head adds the table's ``exit_leave_cycles`` (its result
    written by the exit unit): the k leavers finish k x 7 us after the head, and the rest
    of the batch starts its next op that much later. Nothing else changes."""
    m = mk_model(n_layers=3, heads=(0,), probs=(0.5, 0.5))
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0,) * 8), slo_ms=10.0),), duration_s=1.0)
    base = run(sc, ("dynamic", {"max_batch": 8, "max_delay_ms": 0}), mk_table(m), seed=1, check=True)
    res = run(sc, ("dynamic", {"max_batch": 8, "max_delay_ms": 0}), mk_table(m, exit_leave_cycles=(7,)), seed=1,
              check=True)
    k = int((res.exit == 0).sum())
    assert 0 < k < 8 and np.array_equal(res.exit, base.exit)
    assert res.finish == pytest.approx(base.finish + 7 * k * 1e-6)
    assert res.busy_s == pytest.approx(base.busy_s + 7 * k * 1e-6)
    assert [s for *_, s, _ in res.op_log] == [s for *_, s, _ in base.op_log]
    assert mk_table(m, exit_leave_cycles=(7,)).batch1_latency_cycles(0) == mk_table(m).batch1_latency_cycles(0) + 7


class Scripted(Scheduler):
    """Start 2 requests; when the third arrives, preempt for catch-up at the current boundary."""
    name = "scripted"
    preemptive = True

    def __init__(self, merge=True):
        super().__init__()
        self.merge = merge
        self.exits = []

    def decide(self, view):
        if view.running is None and view.paused is None:
            m = view.oldest_model()
            return start(min(2, len(view.queues[m])), m)
        if view.running is not None and view.paused is None and view.queues[0]:
            return preempt(1, 0, merge=self.merge)
        return HOLD

    def on_exit(self, view, batch, head, n_left):
        self.exits.append((head, n_left, batch.size))


def test_preempt_catch_up_and_merge():
    m = mk_model(n_layers=4, heads=(2,), probs=(0.0, 1.0))
    tab = mk_table(m, preempt_cycles=7, merge_cycles=5)
    # ops: l0 l1 l2 h0 l3; at b=2 l0 ends at 140 us; the third request arrives at 150 us (during l1)
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0, 0.0, 150e-6)), slo_ms=10.0),), duration_s=1.0)
    s = Scripted()
    res = run(sc, s, tab, check=True)
    assert res.preemptions == 1 and res.merges == 1
    log = [(p0, p1, size, bid) for _, _, _, p0, p1, size, bid in res.op_log]
    # batch 1 runs l0, l1 (to the boundary after the arrival) and pauses at pos 2;
    # batch 2 (the new request) catches up through l0, l1
    assert log[0][:3] == (0, 2, 2)
    assert log[1][:3] == (0, 2, 1) and log[1][3] != log[0][3]
    # merged at pos 2: one batch of 3 runs the rest, from the same layer
    assert log[2][0] == 2 and all(size == 3 and bid == log[0][3] for p0, p1, size, bid in log[2:])
    assert res.finish[0] == res.finish[1] == res.finish[2]
    t_pause = (140 + 141) * 1e-6
    t_merge = t_pause + 7e-6 + (120 + 121) * 1e-6 + 5e-6
    assert res.finish[0] == pytest.approx(t_merge + (162 + 16 + 163) * 1e-6, abs=1e-12)
    assert res.start[2] == pytest.approx(t_pause + 7e-6, abs=1e-12)
    assert s.exits == [(1, 3, 0)]                              # final exit: all 3 leave together


def test_preempt_without_merge_resumes_paused():
    m = mk_model(n_layers=4, heads=(2,), probs=(0.0, 1.0))
    tab = mk_table(m)
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0, 0.0, 150e-6)), slo_ms=10.0),), duration_s=1.0)
    res = run(sc, Scripted(merge=False), tab, check=True)
    assert res.preemptions == 1 and res.merges == 0
    assert res.finish[2] < res.finish[0] == res.finish[1]   # the preempting request ran to the end first
    sizes = [s for *_, s, _ in res.op_log]
    assert 1 in sizes and max(sizes) == 2


class Bad(Scheduler):
    name = "bad"
    preemptive = True

    def __init__(self, what):
        super().__init__()
        self.what = what

    def decide(self, view):
        if view.running is None and view.paused is None:
            return start(2 if self.what != "too_many" else 50, 0)
        if self.what == "overfill":
            return preempt(len(view.queues[0]), 0)
        if self.what == "start_while_running":
            return start(1, 0)
        return CONTINUE


@pytest.mark.parametrize("what, match", [("too_many", "n = 50"), ("overfill", "exceed B_max"),
                                         ("start_while_running", "not allowed while a batch is running")])
def test_invalid_decisions_raise(what, match):
    m = mk_model()
    tab = mk_table(m, b_max=4)
    sc = Scenario((Device("d", m, TraceReplay(times=(0.0, 0.0) + (1e-5,) * 6), slo_ms=1.0),), duration_s=1.0)
    with pytest.raises(SimulationError, match=match):
        run(sc, Bad(what), tab)


def test_queue_capacity_drops_with_reason():
    m = mk_model()
    tab = mk_table(m)
    sc = scenario(m, rate=5000.0, duration=0.2, queue_capacity=4)
    res = run(sc, "fcfs", tab, seed=1, check=True)
    reqs = generate_requests(sc, 1, slo_bases(sc, tab))
    assert_conserved(res, reqs, m)
    dropped = ~res.done
    assert dropped.sum() > 0 and set(res.drop_reason[dropped]) == {"queue_full"}
    s = res.summary()
    assert s["dropped"] == dropped.sum() and s["drop_reasons"] == {"queue_full": int(dropped.sum())}
    assert s["slo_attainment"] <= 1 - dropped.mean() + 1e-12


def test_multi_model_batches_never_mix():
    a, b = mk_model(name="a"), mk_model(n_layers=6, heads=(2,), probs=(0.5, 0.5), name="b")
    ta, tb = mk_table(a), mk_table(b)
    sc = Scenario((Device("x", a, Poisson(1500.0), slo_mult=5), Device("y", b, Poisson(1500.0), slo_mult=5)),
                  duration_s=0.3)
    for sched in ("dynamic", "lazy", "prema", "fluid"):
        res = run(sc, sched, [ta, tb], seed=4, check=True)
        assert res.done.all()
        by_batch = {}
        for _, _, model, *_, bid in res.op_log:
            assert by_batch.setdefault(bid, model) == model
        assert set(by_batch.values()) == {0, 1}


class NoShortcut(Scheduler):
    """Wraps a scheduler and hides its ``work_conserving`` promise: the simulator asks at every decision."""
    def __init__(self, inner):
        self.inner, self.name, self.preemptive, self.knobs = inner, inner.name, inner.preemptive, inner.knobs

    def reset(self, view):
        self.inner.reset(view)

    def decide(self, view):
        return self.inner.decide(view)


@pytest.mark.parametrize("sched", ["fcfs", "lazy", "prema", "fluid"])
def test_work_conserving_shortcuts_change_nothing(sched):
    """Serving lone requests in one go and skipping one-answer decisions gives the very same run;
    a scheduler without the promise is asked every time (and, here, answers the same)."""
    from fluidnpu.sched import make
    m, m2 = mk_model(), mk_model(n_layers=3, heads=(0,), probs=(0.5, 0.5), name="n")
    tabs = [mk_table(m, preempt_cycles=5, merge_cycles=3, exit_leave_cycles=(4, 9)),
            mk_table(m2, base=40, preempt_cycles=5, exit_leave_cycles=(6,))]
    sc = Scenario(devices=(Device("a", m, Poisson(400.0), slo_mult=3), Device("b", m2, Poisson(900.0), slo_mult=4),
                           Device("c", m, MMPP2((100.0, 2500.0), (0.05, 0.02)), slo_mult=5)),
                  duration_s=2.0, warmup_s=0.2)
    assert make(sched).work_conserving
    fast = run(sc, sched, tabs, seed=5)
    slow = run(sc, NoShortcut(make(sched)), tabs, seed=5)
    checked = run(sc, sched, tabs, seed=5, check=True)           # check mode takes no shortcut either
    for other in (slow, checked):
        assert np.array_equal(fast.finish, other.finish) and np.array_equal(fast.start, other.start)
        assert np.array_equal(fast.exit, other.exit)
        a, b = fast.summary(), other.summary()
        for k in ("preemptions", "merges", "batch_size_hist", "batch_start_hist", "mac_utilisation"):
            assert a[k] == b[k], k
        assert a["utilisation"] == pytest.approx(b["utilisation"], rel=1e-12)
    assert 0.2 < fast.summary()["utilisation"] < 0.9 and fast.done.all()
