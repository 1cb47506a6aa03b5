"""Co-simulation: one trace served by a scheduler on the RTL NPU and on the serving
simulator's FBE mode; the same metrics for both and their per-request agreement.

``prepare`` draws the requests of a single-model scenario (arrivals on whole cycles),
gives each request an input (a test image of the network, chosen by the seed) and its
reference exit (the numpy reference of that input), compiles the network for the FBE
and derives the latency table the schedulers predict with. ``run_model`` runs the
serving simulator's FBE mode (:class:`~.engine.FbeEngine`); ``run_rtl`` runs the same
host on the RTL (:mod:`.tb`); ``agreement`` compares their completion cycles.
"""
from __future__ import annotations

import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.runner import MemTiming, SimError

from ..network import NetworkProgram, compile_network, reference_sample
from ..serving.plan import ModelPlan, op_sequence
from ..serving.result import Result
from ..serving.run import as_scenario, warm_window
from ..serving.scenario import Requests, Scenario, ScenarioError, for_requests, generate_requests, scale_rates
from .engine import FbeEngine
from .host import CosimError, Host
from .timing import FbeTiming

__all__ = ["COSIM_CONFIG", "DEFAULT_SCENARIO", "CosimSetup", "prepare", "make_host", "run_model", "run_rtl",
           "run_tables", "metric_errors", "agreement", "RunRecord"]

#: the hardware the co-simulation runs by default: the digits network's configuration
#: (docs/models.md) with 8 batch slots
COSIM_CONFIG = HwConfig(tc=4, tp=4, tr=8, x_buf_elems=4096, w_buf_elems=2048, b_max=8, net_entries=8,
                        max_classes=16, mem_bytes=4)
DEFAULT_SCENARIO = Path(__file__).with_name("digits_scenario.toml")


@dataclass
class CosimSetup:
    """Everything both runs share."""
    scenario: Scenario
    scheduler: object                  #: (name, knobs)
    cfg: HwConfig
    mem: MemTiming
    prog: NetworkProgram
    policies: dict
    timing: FbeTiming
    plans: list
    requests: Requests
    arrival_cycle: np.ndarray
    images: np.ndarray                 #: test image of each request
    exits: np.ndarray                  #: reference exit of each request
    classes: np.ndarray                #: reference class of each request
    labels: np.ndarray | None
    measured: np.ndarray
    t_warm: float
    seed: int
    mem_image: np.ndarray = field(repr=False, default=None)
    network: object = field(repr=False, default=None)   #: the Network (model, weights, thresholds, criteria)
    inputs: np.ndarray = field(repr=False, default=None)
    refs: dict = field(repr=False, default_factory=dict)  #: image -> numpy reference of that image


def _network_for(sc: Scenario):
    from ..workloads.weights import load_network
    if len(sc.models) != 1:
        raise ScenarioError(f"scenario {sc.name!r}: models {[m.name for m in sc.models]}: the co-simulation runs "
                            f"one network program on the FBE, so the scenario must use exactly one model")
    m = sc.models[0]
    try:
        net = load_network((m.meta or {}).get("path") or m.name)
    except Exception as e:     # noqa: BLE001 - any load failure means: no weights to run
        raise ScenarioError(f"scenario {sc.name!r}: model {m.name!r}: the co-simulation needs a network with "
                            f"weights and exit thresholds (e.g. 'digits'): {e}") from None
    if "test:x" not in net.weights:
        raise ScenarioError(f"scenario {sc.name!r}: model {m.name!r} ships no test inputs ('test:x')")
    return net


def prepare(scenario=None, scheduler="fluid", *, cfg: HwConfig = COSIM_CONFIG, requests: int | None = 200,
            seed: int = 1, mem: MemTiming = MemTiming(latency=20), policy: str = "auto", network=None,
            inputs=None) -> CosimSetup:
    """Draw the trace and build the program, the timing and the plans (see the module doc).

    ``network``: ``(model, weights, thresholds, criteria)`` to run instead of the zoo
    model the scenario names (a scenario dict may then name ``model.name``); ``inputs``:
    the samples requests draw from (default: the network's ``test:x``)."""
    from fluidnpu.sched import make
    from fluidnpu.sched.mapper import map_model
    from ..serving.compare import truncate_requests

    from ..workloads.weights import Network
    if network is not None:
        network = Network(*network)
        def look(name):
            from ..workloads import zoo
            return network.model if name == network.model.name else zoo.load(name)
        sc = as_scenario(DEFAULT_SCENARIO if scenario is None else scenario, models=look)
        if [m.name for m in sc.models] != [network.model.name]:
            raise ScenarioError(f"scenario {sc.name!r}: models {[m.name for m in sc.models]}: the network given is "
                                f"{network.model.name!r}; the scenario must use exactly that one model")
        net = network
    else:
        sc = as_scenario(DEFAULT_SCENARIO if scenario is None else scenario)
        net = _network_for(sc)
    if isinstance(scheduler, str):
        scheduler = (scheduler, {})
    make(scheduler[0], **dict(scheduler[1]))          # name and knobs are valid
    model = net.model
    if inputs is None and "test:x" not in net.weights:
        raise ScenarioError(f"network {model.name!r}: no inputs given and no test inputs ('test:x') in its weights")
    xs = np.asarray(net.weights["test:x"] if inputs is None else inputs).astype(np.int64)
    l0 = model.layers[0]
    xs = xs.reshape(xs.shape[0], l0.r, l0.p) if xs.ndim == 2 else xs
    if xs.ndim != 3 or xs.shape[1:] != (l0.r, l0.p) or xs.shape[0] == 0:
        raise ScenarioError(f"inputs: shape {xs.shape}: must be (N, {l0.r}, {l0.p}) or (N, {l0.r * l0.p}), N >= 1")
    labels = np.asarray(net.weights["test:y"]) if inputs is None and "test:y" in net.weights else None
    # the trace: arrivals on whole cycles (request ids in arrival order)
    f = cfg.clock_mhz * 1e6
    if requests is not None:
        sc = for_requests(sc, requests, seed)
    policies = {}
    if policy != "whole":
        plan = map_model(cfg, model, hardware="fluid" if policy == "auto" else "rbatch", b_max=cfg.b_max, mem=mem)
        policies = {(b, lid): (br, bp, k) for b, lid, _n, br, bp, k, _c in plan.table_rows()}
    # compile with room for the requests (input area and result area per request)
    probe = generate_requests(sc, seed, {model.name: 1.0})
    n = len(probe) if requests is None else min(len(probe), requests)
    if n == 0:
        raise ScenarioError(f"scenario {sc.name!r}: no request arrives in {sc.duration_s} s")
    if n > 1 << cfg.tag_width:
        raise ScenarioError(f"requests = {n}: each request is a sample tag of tag_width = {cfg.tag_width} bits, "
                            f"so at most {1 << cfg.tag_width} per run")
    prog = compile_network(cfg, model, net.weights, net.thresholds, net.criteria, n_inputs=n, tag_space=n)
    timing = FbeTiming(prog, policies, mem)
    table = timing.latency_table()
    base = table.batch1_latency_s()
    reqs = generate_requests(sc, seed, {model.name: base})
    if requests is not None:
        reqs = truncate_requests(reqs, requests)
    acyc = np.ceil(reqs.arrival * f - 1e-6).astype(np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    images = rng.integers(0, xs.shape[0], size=len(reqs))
    crit = list(net.criteria)
    refs = {int(i): reference_sample(cfg, model, net.weights, net.thresholds, crit, xs[i]) for i in np.unique(images)}
    exits = np.array([refs[int(i)]["exit"] for i in images], dtype=np.int64)
    classes = np.array([refs[int(i)]["cls"] for i in images], dtype=np.int64)
    reqs = Requests(arrival=acyc / f, device=reqs.device, model=reqs.model, exit=exits, slo_s=reqs.slo_s)
    measured, t_warm = warm_window(sc, reqs.arrival)
    plans = [ModelPlan(0, model, table, base)]
    mem_image = prog.mem.copy()
    for r in range(len(reqs)):
        prog.put_input(mem_image, r, xs[images[r]].reshape(prog.input_shape))
    return CosimSetup(scenario=sc, scheduler=scheduler, cfg=cfg, mem=mem, prog=prog, policies=policies,
                      timing=timing, plans=plans, requests=reqs, arrival_cycle=acyc, images=images, exits=exits,
                      classes=classes, labels=None if labels is None else labels[images], measured=measured,
                      t_warm=t_warm, seed=int(seed), mem_image=mem_image, network=net, inputs=xs,
                      refs=refs)


def make_host(s: CosimSetup) -> Host:
    from fluidnpu.sched import make
    sched = make(s.scheduler[0], **dict(s.scheduler[1]))
    T = s.timing
    model = s.prog.model
    op_macs = []
    for kind, j in op_sequence(model):
        op_macs.append(model.layers[j].macs if kind == "layer" else sum(L.macs for L in model.exits[j].layers))
    return Host(s.requests, s.plans, sched, clock_hz=s.cfg.clock_mhz * 1e6, arrival_cycle=s.arrival_cycle,
                op_of=T.op_of, op_macs=op_macs, warmup_t=min(s.t_warm, 1e300),
                queue_capacity=s.scenario.queue_capacity)


@dataclass
class RunRecord:
    """One run's outcome: the metrics object and the raw per-request cycles."""
    engine: str                       #: "model" or "rtl:<sim>"
    result: Result
    finish_cycle: np.ndarray          #: -1: dropped
    start_cycle: np.ndarray
    events: list
    cycles: int
    wall_s: float
    extra: dict = field(default_factory=dict)


def _record(s: CosimSetup, host: Host, engine: str, events, wall_s, extra=None) -> RunRecord:
    req = s.requests
    n = len(req)
    reasons = np.array([""] * n, dtype=object)
    for r, why in host.drop_reason.items():
        reasons[r] = why
    t_end = host.t_end
    t_warm = s.t_warm if np.isfinite(s.t_warm) else t_end
    span = t_end - t_warm
    mac_util = host.macs_w / (s.cfg.lanes * span * host.f) if span > 0 else None
    res = Result(scheduler=host.scheduler.name, knobs=dict(host.scheduler.knobs), hardware=f"fbe/{engine}",
                 seed=s.seed, devices=[d.name for d in s.scenario.devices], models=[s.prog.model.name],
                 n_heads=[len(s.prog.model.exits)], arrival=req.arrival.copy(),
                 start=np.asarray(host.start, dtype=float), finish=np.asarray(host.finish, dtype=float),
                 exit=np.asarray(host.exit_taken, dtype=np.int64), device=req.device.copy(), model=req.model.copy(),
                 slo_s=req.slo_s.copy(), drop_reason=reasons, measured=s.measured,
                 slo_base_s=[s.plans[0].slo_base_s], slo_mults=s.scenario.slo_mults, t_warm=t_warm, t_end=t_end,
                 busy_s=host.busy_w, mac_util=mac_util, preemptions=host.preemptions, merges=host.merges,
                 op_hist=np.asarray(host.op_hist), start_hist=np.asarray(host.start_hist))
    return RunRecord(engine=engine, result=res, finish_cycle=np.asarray(host.finish_cycle, dtype=np.int64),
                     start_cycle=np.asarray(host.start_cycle, dtype=np.int64), events=list(events),
                     cycles=int(round(t_end * host.f)), wall_s=wall_s, extra=extra or {})


def run_model(s: CosimSetup) -> RunRecord:
    """The serving simulator's FBE mode on the setup's trace."""
    t0 = time.perf_counter()
    host = make_host(s)
    eng = FbeEngine(host, s.timing, s.exits)
    eng.run()
    return _record(s, host, "model", eng.events, time.perf_counter() - t0)


def run_rtl(s: CosimSetup, sim: str = "verilator", *, run_dir=None, keep: bool = False,
            max_cycles: int | None = None, progress=None, wave=None) -> RunRecord:
    """The same host driving the RTL NPU under cocotb (build cached per configuration).

    ``wave``: a path to record the whole run's waveform to (FST on Icarus, VCD on
    Verilator: the suffix follows the simulator); the record's ``extra["wave"]``.

    ``progress(cycles, done)``, if given, is called about twice a second while the
    simulator runs with the simulated cycles and the requests finished or dropped."""
    from fluidnpu.hw.fbe_runner import FBE_TOP, build_fbe
    from fluidnpu.hw.runner import recorded_wave, run_cocotb, run_folder
    t0 = time.perf_counter()
    bdir = build_fbe(s.cfg, sim, waves=wave is not None)
    with run_folder(run_dir, "fluidnpu-cosim-") as (rdir, tmp):   # removed on Ctrl-C, SIGTERM, errors
        host = make_host(s)
        if max_cycles is None:
            b1 = s.timing.latency_table().batch1_latency_cycles()
            max_cycles = int(s.arrival_cycle[-1]) + 4 * len(s.requests) * (b1 + 64) + 10_000
        setup = {"cfg": s.cfg, "entries": s.prog.packed_entries(), "table": s.prog.table_words(s.policies),
                 "res_addr": s.prog.res_addr, "res_shift": s.prog.res_shift, "mem": s.mem_image.copy(),
                 "timing": s.mem, "x_addr": [s.prog.input_area(r) for r in range(len(s.requests))],
                 "max_cycles": max_cycles, "host": host}
        (rdir / "setup.pickle").write_bytes(pickle.dumps(setup))
        res = _with_progress(progress, rdir / "progress",
                             lambda: run_cocotb(sim, bdir, FBE_TOP, "fluidnpu.sim.cosim.tb", rdir,
                                                extra_env={"FLUIDNPU_RUN_DIR": str(rdir)}, wave=wave))
        wave_path = recorded_wave(sim, wave)
        err = res.get("cosim", "cocotb test 'cosim' did not run")
        out_p = rdir / "result.pickle"
        if err is not None or not out_p.exists():
            raise SimError(f"{sim}: the co-simulation bench failed (run dir {rdir}): {err}\n"
                           f"(simulator log: {rdir / 'sim.log'}{f'; waveform: {wave_path}' if wave_path else ''})")
        out = pickle.loads(out_p.read_bytes())
        host = out["host"]
        rec = _record(s, host, f"rtl:{sim}", out["events"], time.perf_counter() - t0,
                      {"dut_cycles": out["dut_cycles"], "mem_stats": out["mem_stats"], "run_dir": str(rdir),
                       "wave": None if wave_path is None else str(wave_path)})
        rec.extra["logits_ok"] = _check_logits(s, out["mem"], host)
        if tmp and not keep:
            shutil.rmtree(rdir, ignore_errors=True)
    return rec


def _with_progress(progress, path: Path, fn):
    """Run ``fn`` in a thread, reporting the bench's progress file while it runs."""
    if progress is None:
        return fn()
    import threading
    box = {}

    def target():
        try:
            box["ok"] = fn()
        except BaseException as e:      # noqa: BLE001 - re-raised in the caller's thread
            box["err"] = e
    th = threading.Thread(target=target, daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.5)
            try:
                cyc, done = (int(x) for x in path.read_text().split())
            except (OSError, ValueError):
                continue
            progress(cyc, done)
    except BaseException:
        # Ctrl-C reaches this thread only (the simulator runs in its own process group):
        # stop the simulator so that the thread ends before the run folder is removed
        from fluidnpu.hw.runner import stop_simulators
        stop_simulators()
        th.join()
        raise
    if "err" in box:
        raise box["err"]
    return box["ok"]


def _check_logits(s: CosimSetup, mem: np.ndarray, host: Host) -> int:
    """Every served request's logits and class in the result area equal its reference."""
    bad = []
    for r in range(len(s.requests)):
        if host.finish_cycle[r] < 0:
            continue
        ref = s.refs[int(s.images[r])]
        got = s.prog.read_result(mem, r, len(ref["logits"]))
        if not np.array_equal(got, ref["logits"]):
            bad.append(r)
    if bad:
        raise CosimError(f"{len(bad)} requests' logits differ from the numpy reference (first {bad[:5]})")
    return sum(1 for r in range(len(s.requests)) if host.finish_cycle[r] >= 0)


def agreement(a: RunRecord, b: RunRecord) -> dict:
    """Share of requests with the same completion cycle (or both dropped), and the differences."""
    fa, fb = a.finish_cycle, b.finish_cycle
    same = fa == fb
    diff = np.abs(fa - fb)[(fa >= 0) & (fb >= 0)]
    bad = np.flatnonzero(~same)
    return {"agreement": float(same.mean()) if same.size else 1.0, "requests": int(same.size),
            "mismatches": int(bad.size), "max_abs_diff_cycles": int(diff.max()) if diff.size else 0,
            "first_mismatches": [{"request": int(r), a.engine: int(fa[r]), b.engine: int(fb[r])} for r in bad[:10]]}


def run_tables(s: CosimSetup, hardware: str = "fluid") -> RunRecord:
    """The default serving simulator (the mapper's latency tables for ``hardware``, its own
    semantics, docs/serving.md) on the same trace, deadlines and exits: how far the fast,
    abstract model is from the RTL."""
    from ..serving.run import run
    from ..serving.tables import mapper_table
    t0 = time.perf_counter()
    model = s.prog.model
    tab = mapper_table(model, hardware, s.cfg, b_max=s.cfg.b_max, mem=s.mem)
    res = run(s.scenario, (s.scheduler[0], dict(s.scheduler[1])), {model.name: tab}, s.seed,
              slo_reference={model.name: s.plans[0].table}, requests=s.requests)
    f = s.cfg.clock_mhz * 1e6
    fin = np.where(np.isnan(res.finish), -1, np.round(np.nan_to_num(res.finish, nan=0.0) * f)).astype(np.int64)
    st = np.where(np.isnan(res.start), -1, np.round(np.nan_to_num(res.start, nan=0.0) * f)).astype(np.int64)
    return RunRecord(engine=f"tables:{hardware}", result=res, finish_cycle=fin, start_cycle=st, events=[],
                     cycles=int(round(res.t_end * f)), wall_s=time.perf_counter() - t0)


def metric_errors(ref: RunRecord, other: RunRecord) -> dict:
    """Relative error of ``other``'s headline metrics against ``ref`` (the RTL), and the
    share of requests it completes within 1% of the RTL's latency."""
    a, b = ref.result.summary(), other.result.summary()
    out = {}
    for k in ("mean_ms", "p50_ms", "p99_ms", "utilisation", "mean_batch_size"):
        out[k] = (b[k] - a[k]) / a[k] if a[k] else float("nan")
    out["slo_attainment"] = b["slo_attainment"] - a["slo_attainment"]
    la = ref.result.latency_s
    lb = other.result.latency_s
    both = ~np.isnan(la) & ~np.isnan(lb)
    out["within_1pct"] = float((np.abs(lb[both] - la[both]) <= 0.01 * la[both]).mean()) if both.any() else float("nan")
    return out
