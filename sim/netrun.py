"""Run early-exit networks on the RTL NPU with its FBE and check every sample against the
numpy reference (used by ``fluidnpu network`` and the tests)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fluidnpu.hw.fbe_runner import NetworkJob, NetworkRun, run_network_job
from fluidnpu.hw.runner import MemTiming

from .network import NetworkError, NetworkProgram, reference_sample

__all__ = ["SampleOutcome", "make_job", "check_run", "run_samples"]


@dataclass(frozen=True)
class SampleOutcome:
    index: int
    exit: int
    cls: int
    cycle: int           #: completion cycle (bench cycles: 0 = the first cycle samples may arrive)
    logits: np.ndarray


def make_job(prog: NetworkProgram, xs, arrivals=None, *, policies=None, sched=None,
             reset_at=None, max_cycles=None, step=False) -> NetworkJob:
    """Sample ``i`` gets tag ``i`` and input area ``i``; ``arrivals[i]`` its arrival cycle
    (default: all at cycle 0)."""
    n = len(xs)
    if n > prog.n_inputs:
        raise NetworkError(f"{n} samples: the program has {prog.n_inputs} input areas (compile with n_inputs >= {n})")
    if n > (1 << prog.cfg.tag_width):
        raise NetworkError(f"{n} samples: tags are {prog.cfg.tag_width} bits")
    arrivals = [0] * n if arrivals is None else [int(a) for a in arrivals]
    if len(arrivals) != n or any(a < 0 for a in arrivals):
        raise NetworkError(f"arrivals: need {n} non-negative cycles, got {arrivals[:5]}...")
    mem = prog.mem.copy()
    for i, x in enumerate(xs):
        prog.put_input(mem, i, np.asarray(x).reshape(prog.input_shape))
    order = sorted(range(n), key=lambda i: (arrivals[i], i))
    lat = sum(e.layer.r * e.layer.p * e.layer.c for e in prog.entries)
    return NetworkJob(cfg=prog.cfg, entries=prog.packed_entries(), table=prog.table_words(policies or {}),
                      res_addr=prog.res_addr, res_shift=prog.res_shift, mem=mem,
                      arrivals=[(arrivals[i], i, prog.input_area(i)) for i in order],
                      sched=sched or {"mode": "greedy", "seed": 0, "odd": 0.0, "gap": 0},
                      reset_at=reset_at, step=step,
                      max_cycles=max_cycles or (max(arrivals) + 200 * n + 50 * n * (lat // prog.cfg.lanes + 500)))


def check_run(prog: NetworkProgram, refs: list[dict], run: NetworkRun, *, reset: bool = False) -> list[SampleOutcome]:
    """Every sample reported exactly once with the reference's exit, class and logits; the
    exit events' slot masks match the results; the bench saw no violation. Raises
    AssertionError listing what is wrong."""
    errs = list(run.violations)
    seen = {}
    for r in run.results:
        if r["tag"] in seen:
            errs.append(f"tag {r['tag']}: reported twice")
        seen[r["tag"]] = r
    missing = sorted(set(range(len(refs))) - set(seen))
    if missing:
        errs.append(f"samples never reported: {missing[:10]}")
    extra = sorted(set(seen) - set(range(len(refs))))
    if extra:
        errs.append(f"unknown tags reported: {extra[:10]}")
    outs = []
    for tag, r in sorted(seen.items()):
        if tag >= len(refs):
            continue
        ref = refs[tag]
        logits = prog.read_result(run.mem, tag, len(ref["logits"]))
        if r["exit_id"] != ref["exit"] or r["cls"] != ref["cls"]:
            errs.append(f"sample {tag}: exit {r['exit_id']} class {r['cls']}, reference exit {ref['exit']} "
                        f"class {ref['cls']}")
        elif not np.array_equal(logits, ref["logits"]):
            errs.append(f"sample {tag}: logits {logits.tolist()} != reference {ref['logits'].tolist()}")
        elif (r["top1"], r["top2"]) != (ref["top1"], ref["top2"]):
            errs.append(f"sample {tag}: top1/top2 {r['top1']}/{r['top2']} != {ref['top1']}/{ref['top2']}")
        outs.append(SampleOutcome(tag, r["exit_id"], r["cls"], r["cycle"] - run.cycle0, logits))
    # slots: each exit test's event lists the slots its results freed, each once
    masks = [e["mask"] for e in run.events if e["kind"] == "exit"]
    freed = sum(bin(mk).count("1") for mk in masks)
    if not reset and freed != len(run.results):
        errs.append(f"exit events free {freed} slots, {len(run.results)} results reported")
    if errs:
        raise AssertionError(f"{len(errs)} problem(s) in the {run.sim} run:\n  " + "\n  ".join(errs[:20]))
    return outs


def run_samples(prog: NetworkProgram, xs, arrivals=None, *, sim="icarus", mem=MemTiming(latency=5),
                policies=None, sched=None, reset_at=None, fault=None, check=True, keep=False, step=False, wave=None):
    """Run ``xs`` through the RTL, compare with the reference; returns (outcomes, run, refs).
    ``wave``: a path to record the run's waveform to (the suffix follows the simulator)."""
    m = prog.model
    crit = [("max" if c == 1 else "margin") for c in prog.criteria]
    refs = [reference_sample(prog.cfg, m, prog.weights, prog.thresholds, crit, x) for x in xs]
    job = make_job(prog, xs, arrivals, policies=policies, sched=sched, reset_at=reset_at, step=step)
    run = run_network_job(job, sim=sim, mem=mem, fault=fault, keep=keep, wave=wave)
    outs = check_run(prog, refs, run, reset=reset_at is not None) if check else None
    return outs, run, refs


def check_timing(prog: NetworkProgram, run: NetworkRun, policies=None, mem: MemTiming = MemTiming(latency=5),
                 step: bool = False):
    """Compare the run's event stamps with :mod:`fluidnpu.sim.fbe_model`: every layer
    (layer_start -> layer_done), every exit test (layer_done -> exit) and every step from
    one layer_start to the next of the same batch with no request in between.
    Returns ``(checked, mismatches)``."""
    from .fbe_model import entry_cycles, entry_compute_cycles, exit_test_cycles
    cfg = prog.cfg
    policies = policies or {}
    checked, bad = 0, []

    def pol(b, e):
        br, bp, k = policies.get((b, e.lid), (0, 1, 1))
        return (br if br < b else 0, bp, k)

    def compute(e, b):
        L = e.layer
        return entry_compute_cycles(cfg, L.r, L.p, L.c, b, pol(b, e), bias=e.b_addr != 0,
                                    out_mode=e.out_mode, mem=mem)

    ev = run.events
    hold = False          # after a merge, until the main batch finished a backbone entry
    for i, a in enumerate(ev):
        if a["kind"] == "merge":
            hold = True
        if a["kind"] == "layer_done" and a["ctx"] == 0 and prog.entries[a["layer"]].backbone:
            hold = False
        if a["kind"] == "idle":
            hold = False
        if a["kind"] != "layer_start":
            continue
        e = prog.entries[a["layer"]]
        b = a["count"]
        nxt = ev[i + 1] if i + 1 < len(ev) else None
        if nxt and nxt["kind"] == "layer_done":
            checked += 1
            want = 1 + compute(e, b)
            if nxt["cycle"] - a["cycle"] != want:
                bad.append(f"layer {a['layer']} B={b}: start->done {nxt['cycle'] - a['cycle']}, model {want}")
            if e.exit_id is not None and i + 2 < len(ev) and ev[i + 2]["kind"] == "exit":
                x = ev[i + 2]
                n_exit = bin(x["mask"]).count("1")
                want = exit_test_cycles(cfg, e.layer.c, b, n_exit, mem)
                checked += 1
                if x["cycle"] - nxt["cycle"] != want:
                    bad.append(f"exit test at layer {a['layer']} B={b} exits={n_exit}: "
                               f"{x['cycle'] - nxt['cycle']}, model {want}")
        # the next layer_start of the same batch, nothing but this layer's events between
        j = i + 1
        while j < len(ev) and ev[j]["kind"] in ("layer_done", "exit"):
            j += 1
        if j < len(ev) and ev[j]["kind"] == "layer_start" and ev[j]["ctx"] == a["ctx"] \
                and ev[j]["layer"] == a["layer"] + 1:
            x = [q for q in ev[i + 1:j] if q["kind"] == "exit"]
            n_exit = bin(x[0]["mask"]).count("1") if x else 0
            L = e.layer
            want = entry_cycles(cfg, L.r, L.p, L.c, b, pol(b, e), bias=e.b_addr != 0, out_mode=e.out_mode,
                                mem=mem, exit_test=e.exit_id is not None, n_exit=n_exit)
            nxt_e = prog.entries[a["layer"] + 1]
            hold_after = hold and not (a["ctx"] == 0 and e.backbone)
            if step and a["ctx"] == 0 and nxt_e.src != 2 and not hold_after:
                want += 1          # the decision cycle at the boundary
            checked += 1
            if ev[j]["cycle"] - a["cycle"] != want:
                bad.append(f"layer {a['layer']} -> {a['layer'] + 1} B={b}: {ev[j]['cycle'] - a['cycle']}, "
                           f"model {want}")
    return checked, bad
