"""Schedulers: registry and knobs, dynamic batcher rules, Clipper AIMD, LazyBatching, PREMA, fluid."""
import numpy as np
import pytest

from fluidnpu.sched import Fluid, SchedulerError, knob_defaults, make, names
from fluidnpu.sched.predict import Predictor
from fluidnpu.sim.latency import LatencyTable
from fluidnpu.sim.serving import Device, Poisson, Scenario, TraceReplay, run
from fluidnpu.sim.serving.examples import default_scenario, toy_model
from fluidnpu.sim.serving.plan import ModelPlan
from fluidnpu.sim.workloads.model import EEModel, ExitHead, GemmLayer


def mk_model(n_layers=5, heads=(1, 3), probs=(0.4, 0.3, 0.3), name="m", r=4):
    layers = tuple(GemmLayer(f"{name}l{i}", r=r, p=16, c=8) for i in range(n_layers))
    exits = tuple(ExitHead(a, (GemmLayer(f"{name}h{a}", 1, 8, 4),)) for a in heads)
    return EEModel(name, layers, exits, probs)


def mk_table(model, b_max=8, base=100, per=20, **kw):
    b = np.arange(b_max + 1)[:, None]
    lc = (base + per * b) * np.ones((1, len(model.layers)), dtype=np.int64)
    hc = (10 + 2 * b) * np.ones((1, len(model.exits)), dtype=np.int64)
    return LatencyTable.for_model(model, "rbatch", 1.0, lc, hc, **kw)


def poisson_scenario(model, rate, duration=0.5, n_dev=2, slo_mult=5.0, slo_ms=None):
    slo = {"slo_ms": slo_ms} if slo_ms is not None else {"slo_mult": slo_mult}
    return Scenario(tuple(Device(f"d{i}", model, Poisson(rate), **slo) for i in range(n_dev)), duration_s=duration)


# -- registry ------------------------------------------------------------------------
def test_registry_and_knobs():
    assert names() == ["clipper", "dynamic", "fcfs", "fluid", "lazy", "prema"]
    d = make("dynamic", max_batch=4, max_delay_ms=2.5)
    assert d.max_batch == 4 and d.knobs == {"max_batch": 4, "max_delay_ms": 2.5, "timeout_ms": None}
    assert knob_defaults("clipper")["backoff"] == 0.1
    assert make(d) is d
    with pytest.raises(SchedulerError, match="scheduler = 'nope': unknown; allowed"):
        make("nope")
    with pytest.raises(SchedulerError, match="knob max_batch = 0: must be a positive integer"):
        make("dynamic", max_batch=0)
    with pytest.raises(SchedulerError, match=r"unknown knobs \['batch'\]"):
        make("fluid", batch=3)
    with pytest.raises(SchedulerError, match="knob backoff = 1.5"):
        make("clipper", backoff=1.5)


# -- dynamic batcher -----------------------------------------------------------------
def test_dynamic_respects_max_batch_and_max_delay():
    m = mk_model()
    tab = mk_table(m)
    sc = poisson_scenario(m, rate=2500.0)
    delay = 0.3e-3
    res = run(sc, ("dynamic", {"max_batch": 3, "max_delay_ms": delay * 1e3}), tab, seed=2, check=True)
    assert res.done.all()
    assert sum(res.start_hist[4:]) == 0 and res.start_hist[3] > 0
    assert max(s for *_, s, _ in res.op_log) <= 3
    # a request waits past max_delay only if the NPU is busy at arrival + max_delay
    busy = np.array([(a, b) for a, b, *_ in res.op_log])
    late = np.flatnonzero(res.start > res.arrival + delay + 1e-12)
    assert late.size > 0
    for r in late:
        x = res.arrival[r] + delay
        assert ((busy[:, 0] <= x + 1e-12) & (busy[:, 1] > x)).any(), f"request {r} waited on an idle NPU"


def test_dynamic_low_load_waits_exactly_max_delay_and_burst_starts_at_once():
    m = mk_model()
    tab = mk_table(m)
    times = (0.0, 0.01, 0.02) + (0.05,) * 5
    sc = Scenario((Device("d", m, TraceReplay(times=times), slo_ms=5.0),), duration_s=1.0)
    res = run(sc, ("dynamic", {"max_batch": 4, "max_delay_ms": 2.0}), tab, check=True)
    assert (res.start[:3] - res.arrival[:3]).tolist() == pytest.approx([2e-3] * 3, abs=1e-12)
    assert res.start[3:7].tolist() == pytest.approx([0.05] * 4, abs=1e-12)    # full batch at once
    assert res.start[7] > 0.05 and res.start_hist[4] == 1


def test_dynamic_timeout_drops():
    m = mk_model()
    tab = mk_table(m)
    sc = poisson_scenario(m, rate=4000.0, duration=0.2)
    res = run(sc, ("dynamic", {"max_batch": 2, "max_delay_ms": 0.1, "timeout_ms": 1.0}), tab, seed=1, check=True)
    dropped = ~res.done
    assert dropped.any() and set(res.drop_reason[dropped]) == {"timeout"}
    assert (res.start[res.done] - res.arrival[res.done] <= 1e-3 + 1e-12).all()


# -- Clipper -------------------------------------------------------------------------
def test_clipper_aimd():
    m = mk_model()
    tab = mk_table(m)
    loose = run(poisson_scenario(m, 3000.0, slo_mult=20), "clipper", tab, seed=1)
    assert loose.start_hist[2:].sum() > 0
    s = make("clipper", start_batch=4)
    run(poisson_scenario(m, 3000.0, slo_ms=0.01), s, tab, seed=1)   # every batch breaks the SLO
    assert [bs for *_, bs in s.history[:4]] == pytest.approx([3.6, 3.24, 2.916, 2.6244])
    assert max(bs for *_, bs in s.history) <= 4.0 and s.history[-1][2] == 1.0
    s2 = make("clipper", max_batch=5)
    run(poisson_scenario(m, 3000.0, slo_mult=50), s2, tab, seed=1)
    assert max(bs for *_, bs in s2.history) == 5.0


# -- preemptive schedulers -----------------------------------------------------------
def test_lazy_catches_up_only_when_running_slo_allows():
    m = mk_model()
    tab = mk_table(m)
    res = run(poisson_scenario(m, 2500.0, slo_mult=20), "lazy", tab, seed=1, check=True)
    assert res.preemptions > 20 and res.merges > 0
    # a safety slack longer than any SLO: catching up would always risk the running batch
    safe = run(poisson_scenario(m, 2500.0, slo_mult=20), ("lazy", {"slack_ms": 100.0}), tab, seed=1, check=True)
    assert safe.preemptions == 0 and safe.merges == 0


def test_prema_preempts_long_jobs_for_short_ones_without_merging():
    long = mk_model(n_layers=12, heads=(8,), probs=(0.1, 0.9), name="long", r=64)
    short = mk_model(n_layers=2, heads=(0,), probs=(0.5, 0.5), name="short")
    sc = Scenario((Device("L", long, Poisson(300.0), slo_mult=5), Device("S", short, Poisson(600.0), slo_mult=5)),
                  duration_s=0.5)
    res = run(sc, "prema", [mk_table(long), mk_table(short)], seed=1, check=True)
    assert res.preemptions > 0 and res.merges == 0 and res.done.all()


def _prema_view(queued, cum, now=1.0, running=None, preempt_s=0.0):
    """A hand-made view for PREMA: ``queued[m]`` = [(arrival, slo)] per model, ``cum[m]`` =
    the cumulative op times per batch size (b -> list), ``running`` = (model, pos, [(arrival,
    slo)]) or None."""
    from collections import deque
    from types import SimpleNamespace as NS
    arrival, slo, queues = [], [], []
    for reqs in queued:
        q = deque()
        for a, s in reqs:
            q.append(len(arrival))
            arrival.append(a)
            slo.append(s)
        queues.append(q)
    plans = [NS(cum=c, preempt_s=preempt_s, b_max=len(c) - 1) for c in cum]
    run = None
    if running is not None:
        m, pos, members = running
        ids = list(range(len(arrival), len(arrival) + len(members)))
        for a, s in members:
            arrival.append(a)
            slo.append(s)
        run = NS(model=m, pos=pos, size=len(ids), rids=lambda ids=ids: ids)
    return NS(running=run, paused=None, now=now, arrival=arrival, slo=slo, queues=queues, plans=plans)


def test_prema_rule():
    """PREMA's rule on a hand-made view: among tasks whose token (the largest share of SLO
    spent) is at least ``threshold`` times the largest, the shortest predicted remaining
    time runs; switching away from a running batch preempts it without a merge."""
    from fluidnpu.sched import CONTINUE, HOLD, preempt, start
    # per batch size: cumulative time after each of two ops
    long = [None, [0.0, 4.0, 8.0], [0.0, 5.0, 10.0]]
    short = [None, [0.0, 0.5, 1.0], [0.0, 0.6, 1.2]]
    p = make("prema", threshold=0.5)
    # equal tokens: the short model's batch starts first, whichever model is older
    v = _prema_view([[(0.0, 10.0)], [(0.5, 5.0)]], [long, short])
    assert p.decide(v) == start(1, 1)
    v = _prema_view([[(0.5, 5.0)], [(0.0, 10.0), (0.2, 10.0)]], [long, short])
    assert p.decide(v) == start(2, 1)
    # the short task's token is below half the long one's: only the long one is a candidate
    v = _prema_view([[(0.0, 1.0)], [(0.9, 10.0)]], [long, short])          # tokens 1.0 and 0.01
    assert p.decide(v) == start(1, 0)
    assert make("prema", threshold=0.0).decide(v) == start(1, 1)
    # a running long batch (one op left, 4 s) against a queued short one (1 s + preempt cost)
    v = _prema_view([[], [(0.9, 1.0)]], [long, short], running=(0, 1, [(0.0, 10.0)]), preempt_s=0.1)
    assert p.decide(v) == preempt(1, 1, merge=False)
    # ... and against a queued job longer than what it has left: it keeps running
    v = _prema_view([[], [(0.9, 1.0)]], [long, long], running=(0, 1, [(0.0, 10.0)]))
    assert p.decide(v) == HOLD
    assert p.decide(_prema_view([[], []], [long, short])) == CONTINUE


def test_predictor_exit_aware_vs_blind():
    m = mk_model(probs=(0.5, 0.25, 0.25))
    plan = ModelPlan(0, m, mk_table(m), 1.0)
    aware = Predictor(plan.lat, plan.alive, plan.exit_at)
    blind = Predictor(plan.lat, plan.alive, plan.exit_at, exit_blind=True)
    c = plan.cum
    assert blind.erem[0][4] == pytest.approx(c[4][-1])
    assert aware.erem[0][4] < blind.erem[0][4]
    # one sample: op i costs lat[1, i] times the probability it is still there
    assert aware.erem[0][1] == pytest.approx(float((plan.lat[1] * plan.alive[:-1]).sum()))
    # a member still present sees at least the unconditional expectation
    assert all(mm >= u - 1e-15 for mm, u in zip(aware.M[0][4], aware.U[0][4]))
    assert aware.el[0][1] == pytest.approx(sum(plan.exit_at[i] * c[1][i + 1] for i in range(plan.n_ops)))


class PeekCheck(Fluid):
    """Fluid that re-decides with the running batch's hidden exit draws reshuffled: decisions must not change."""
    name = "fluid-peek-check"

    def decide(self, view):
        d = super().decide(view)
        b = view.running or view.paused
        if b is not None and b.size:
            saved = b._groups
            members = [r for g in saved for r in g]
            b._groups = [[] for _ in saved[:-1]] + [members]     # everyone "exits" at the end
            try:
                assert super().decide(view) == d
            finally:
                b._groups = saved
            self.checked += 1
        return d

    def reset(self, view):
        super().reset(view)
        self.checked = 0


def test_fluid_does_not_peek_at_drawn_exits():
    m = mk_model()
    tab = mk_table(m)
    s = PeekCheck()
    res = run(poisson_scenario(m, 2500.0), s, tab, seed=3)
    assert s.checked > 100 and res.preemptions > 0


def test_fluid_wins_on_spiky_load():
    model = toy_model()
    rb, fl = LatencyTable.synthetic(model, "rbatch"), LatencyTable.synthetic(model, "fluid")
    sc = default_scenario(rate_per_device=550.0, duration_s=4.0, slo_mult=5.0)
    out = {}
    for name in ("dynamic", "clipper", "lazy", "prema", "fluid"):
        out[name] = run(sc, name, rb, seed=1, slo_reference=rb).summary()
    out["fluid@fluid"] = run(sc, "fluid", fl, seed=1, slo_reference=rb).summary()
    for base in ("dynamic", "clipper", "lazy", "prema"):
        assert out["fluid"]["mean_ms"] < out[base]["mean_ms"], base
        assert out["fluid"]["p99_ms"] < out[base]["p99_ms"], base
    assert out["fluid@fluid"]["mean_ms"] < out["fluid"]["mean_ms"]
    assert out["fluid@fluid"]["slo_attainment"] >= max(o["slo_attainment"] for o in out.values()) - 1e-12
