"""Property tests: random models, tables and bursty traces; every scheduler keeps the invariants."""
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from fluidnpu.sched import make, names
from fluidnpu.sim.latency import LatencyTable
from fluidnpu.sim.serving import Device, Scenario, TraceReplay, run
from fluidnpu.sim.serving.plan import ModelPlan
from fluidnpu.sim.workloads.model import EEModel, ExitHead, GemmLayer


@st.composite
def cases(draw):
    n_layers = draw(st.integers(1, 6))
    heads = sorted(draw(st.sets(st.integers(0, max(0, n_layers - 2)), max_size=n_layers - 1))) if n_layers > 1 else []
    w = draw(st.lists(st.integers(0, 4), min_size=len(heads) + 1, max_size=len(heads) + 1))
    if sum(w) == 0:
        w[-1] = 1
    probs = tuple(x / sum(w) for x in w)
    model = EEModel("r", tuple(GemmLayer(f"l{i}", 2, 3, 4) for i in range(n_layers)),
                    tuple(ExitHead(a, (GemmLayer(f"h{a}", 1, 2, 2),)) for a in heads), probs)
    b_max = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    lc = rng.integers(1, 50, size=(b_max + 1, n_layers)).cumsum(0)      # non-decreasing in b
    hc = rng.integers(1, 10, size=(b_max + 1, len(heads))).cumsum(0)
    tab = LatencyTable.for_model(model, "rbatch", 1.0, lc, hc, preempt_cycles=int(rng.integers(0, 5)),
                                 merge_cycles=int(rng.integers(0, 5)),
                                 exit_leave_cycles=tuple(rng.integers(0, 5, size=len(heads)).tolist()))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 1e-6, 5e-6, 2e-5, 5e-5, 1e-4]), min_size=1, max_size=80))
    times = tuple(np.cumsum(gaps).tolist())
    slo = draw(st.sampled_from([0.01, 0.05, 1.0]))
    cap = draw(st.sampled_from([None, None, 3]))
    sc = Scenario((Device("a", model, TraceReplay(times=times), slo_ms=slo),
                   Device("b", model, TraceReplay(times=times[::2]), slo_mult=3.0)),
                  duration_s=1.0, queue_capacity=cap)
    return model, tab, sc


@pytest.mark.parametrize("sched", sorted(names()))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), seed=st.integers(0, 3), mb=st.sampled_from([2, 4, None]))
def test_random_cases_keep_invariants(sched, case, seed, mb):
    model, tab, sc = case
    knobs = {"max_batch": mb} if sched in ("dynamic", "lazy", "fluid") and mb else {}
    res = run(sc, make(sched, **knobs), tab, seed=seed, check=True)   # check=True asserts as it runs
    event(f"{sched} preempted" if res.preemptions else f"{sched} no preemption")
    event("some dropped" if (~res.done).any() else "none dropped")
    done = res.done
    assert (done ^ (res.drop_reason != "")).all()
    assert set(res.drop_reason[~done]) <= {"queue_full"}
    plan = ModelPlan(0, model, tab, 1.0)
    need = sum(plan.exit_op[e] + 1 for e in res.exit[done])
    assert sum((p1 - p0) * s for _, _, _, p0, p1, s, _ in res.op_log) == need
    cap = 1 if sched == "fcfs" else min(mb, tab.b_max) if knobs else tab.b_max
    assert max((s for *_, s, _ in res.op_log), default=0) <= cap
