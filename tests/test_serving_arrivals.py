"""Arrival processes: statistics on large fixed-seed samples, validation, trace replay errors."""
import numpy as np
import pytest

from fluidnpu.sim.serving import (MMPP2, ArrivalError, GammaRenewal, Poisson, TraceError, TraceReplay,
                                  read_trace)


def rng(seed=7):
    return np.random.default_rng(seed)


def test_poisson_rate_and_exponential_gaps():
    t = Poisson(500.0).generate(rng(), 400.0)            # ~200k arrivals
    assert t.min() >= 0 and t.max() < 400 and (np.diff(t) >= 0).all()
    assert abs(t.size / 400.0 - 500.0) / 500.0 < 0.01
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.02   # CV of exponential gaps is 1


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_rate_and_cv(cv):
    t = GammaRenewal(200.0, cv).generate(rng(11), 1000.0)
    gaps = np.diff(t)
    assert abs(t.size / 1000.0 - 200.0) / 200.0 < 0.03
    assert abs(gaps.std() / gaps.mean() - cv) / cv < 0.03
    assert t.max() < 1000.0


def test_mmpp_mean_rate_and_spikes():
    p = MMPP2(rates=(50.0, 500.0), dwell_s=(2.0, 0.5))
    assert p.mean_rate == pytest.approx((50 * 2 + 500 * 0.5) / 2.5)
    t = p.generate(rng(3), 4000.0)
    assert abs(t.size / 4000.0 - p.mean_rate) / p.mean_rate < 0.03
    counts = np.bincount((t * 10).astype(int))          # arrivals per 100 ms
    assert counts.var() / counts.mean() > 5              # far burstier than Poisson (ratio 1)
    assert (np.diff(t) >= 0).all()


def test_same_seed_same_draws():
    a = GammaRenewal(100, 2).generate(rng(5), 50)
    b = GammaRenewal(100, 2).generate(rng(5), 50)
    c = GammaRenewal(100, 2).generate(rng(6), 50)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("make, match", [
    (lambda: Poisson(0), "rate = 0"),
    (lambda: GammaRenewal(10, -1), "cv = -1"),
    (lambda: MMPP2((1.0,), (1.0, 1.0)), "rates"),
    (lambda: MMPP2((0.0, 0.0), (1.0, 1.0)), "at least one"),
    (lambda: MMPP2((1.0, 2.0), (1.0, 0.0)), r"dwell_s\[1\] = 0"),
    (lambda: TraceReplay(times=(0.1, -2.0)), r"times\[1\]"),
    (lambda: TraceReplay(), "exactly one"),
])
def test_parameter_errors(make, match):
    with pytest.raises(ArrivalError, match=match):
        make()


def test_trace_read_and_replay(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text("timestamp,device\n# a comment\n0.5,cam1\n0.1,cam0\n\n0.3,cam1\n2.5,cam0\n")
    t, d = read_trace(p)
    assert t.tolist() == [0.1, 0.3, 0.5, 2.5] and d == ["cam0", "cam1", "cam1", "cam0"]
    assert TraceReplay(path=str(p), device="cam1").generate(rng(), 10).tolist() == [0.3, 0.5]
    assert TraceReplay(path=str(p)).generate(rng(), 1.0).tolist() == [0.1, 0.3, 0.5]
    assert TraceReplay(times=(3.0, 1.0)).generate(rng(), 10).tolist() == [1.0, 3.0]


@pytest.mark.parametrize("body, line, match", [
    ("0.1,cam0\nabc,cam1\n", 2, "field 'timestamp' = 'abc'"),
    ("0.1,cam0\n0.2\n", 2, "has 1 fields"),
    ("0.1,cam0,x\n", 1, "has 3 fields"),
    ("timestamp,device\n-1,cam0\n", 2, "field 'timestamp' = '-1'"),
    ("0.1,cam0\n0.2, \n", 2, "field 'device' is empty"),
    ("0.1,cam0\ninf,cam0\n", 2, "field 'timestamp' = 'inf'"),
])
def test_trace_errors_name_file_line_field(tmp_path, body, line, match):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert str(p) in str(e.value) and f"line {line}:" in str(e.value)
    assert e.match(match)
    with pytest.raises(TraceError):
        TraceReplay(path=str(p))


def test_trace_missing_file(tmp_path):
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "nope.csv")


def test_mmpp_group_shares_the_state_path():
    """Devices of one MMPP group spike together (their per-100 ms counts correlate); without a
    group they are independent; each keeps its own mean rate; a group's dwell times must agree."""
    from fluidnpu.sim.serving import Device, Scenario, ScenarioError, generate_requests
    from fluidnpu.sim.serving.examples import toy_model
    m = toy_model()

    def corr(group):
        devs = tuple(Device(f"d{i}", m, MMPP2((20.0, 200.0), (2.0, 0.5), group), slo_ms=5) for i in range(2))
        sc = Scenario(devices=devs, duration_s=2000.0)
        r = generate_requests(sc, 4, {m.name: 1.0})
        c = [np.bincount((r.arrival[r.device == i] * 10).astype(int), minlength=20000) for i in range(2)]
        assert all(abs(x.sum() / 2000.0 - 56.0) / 56.0 < 0.05 for x in c)       # mean rate (20*2 + 200*.5)/2.5
        return np.corrcoef(c[0], c[1])[0, 1]

    assert corr("home") > 0.5 and abs(corr(None)) < 0.05
    with pytest.raises(ScenarioError, match=r"device 'b': arrivals.dwell_s = \[1.0, 0.5\] in group 'home': "
                                            r"must equal \[2.0, 0.5\]"):
        Scenario(devices=(Device("a", m, MMPP2((1.0, 5.0), (2.0, 0.5), "home"), slo_ms=5),
                          Device("b", m, MMPP2((1.0, 5.0), (1.0, 0.5), "home"), slo_ms=5)), duration_s=1.0)
    with pytest.raises(ArrivalError, match="group = ''"):
        MMPP2((1.0, 5.0), (2.0, 0.5), "")
