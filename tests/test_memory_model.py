"""Pins the memory model's timing contract (fluidnpu.hw.tb.memory) on Icarus.

A small Amaranth DUT issues a fixed pattern of reads and writes on the core's memory
port and stamps, in hardware, the cycle of every request and response transfer. The
cocotb tests below (``mm_*``, one simulator launch for all) compare the stamps with the
contract: request in cycle n -> response valid in cycle n + latency, one request every
``interval`` cycles, a bounded queue, in-order responses, strobed writes, protocol
checks. This file is also the cocotb test module (it is imported inside the simulator).
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.tb.memory import MemoryModel, MemoryModelError

CFG = HwConfig(tc=8, tp=8, mem_bytes=8)      # the 8 x 8 core: mem_bytes = 8, addr_width = 32
M = CFG.mem_bytes
MEM_SIZE = 4096
TOP = "mm_loop"


# -- the loopback DUT (elaborated on the pytest side only) ---------------------------------

def make_dut(cfg: HwConfig):
    from amaranth.hdl import Cat, Const, Module, Mux, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from fluidnpu.hw.interface import log2, mem_port_signature

    Mb = cfg.mem_bytes
    aw = cfg.addr_width

    class LoopDut(wiring.Component):
        """Issues ``n_rd`` reads from ``rd_base`` and ``n_wr`` writes to ``wr_base`` (one beat
        apart), holding ``valid`` until each transfers; takes responses per ``resp_mode``
        (0: always, 1: odd cycles, 2: every 4th cycle, 3: from cycle ``hold`` on).
        ``bad`` = 1 changes the read address while stalled, 2 drops ``valid`` after a
        stalled cycle. ``*_cnt``/``*_stamp`` count the transfers and hold the cycle
        (``cyc``) of the latest one."""

        def __init__(self):
            super().__init__({
                "mem": Out(mem_port_signature(cfg)),
                "go": In(1), "n_rd": In(16), "rd_base": In(aw), "n_wr": In(16),
                "wr_base": In(aw), "resp_mode": In(2), "hold": In(32), "bad": In(2),
                "cyc": Out(32),
                "rq_cnt": Out(16), "rq_stamp": Out(32),
                "rs_cnt": Out(16), "rs_stamp": Out(32), "rs_data": Out(8 * Mb),
                "wq_cnt": Out(16), "wq_stamp": Out(32),
                "ws_cnt": Out(16), "ws_stamp": Out(32),
            })

        def elaborate(self, platform):
            m = Module()
            mem = self.mem
            m.d.sync += self.cyc.eq(self.cyc + 1)
            rd_i = Signal(16)
            wr_i = Signal(16)
            stalled = Signal()
            lb = log2(Mb)

            take = Signal()
            with m.Switch(self.resp_mode):
                with m.Case(0):
                    m.d.comb += take.eq(1)
                with m.Case(1):
                    m.d.comb += take.eq(self.cyc[0])
                with m.Case(2):
                    m.d.comb += take.eq(self.cyc[:2] == 0)
                with m.Case(3):
                    m.d.comb += take.eq(self.cyc >= self.hold)

            m.d.comb += [
                mem.rd_req.valid.eq(self.go & (rd_i < self.n_rd)
                                    & ~((self.bad == 2) & stalled)),
                mem.rd_req.payload.eq(self.rd_base + (rd_i << lb)
                                      + Mux(self.bad == 1, self.cyc[0] << lb, 0)),
                mem.rd_resp.ready.eq(take),
                mem.wr_req.valid.eq(self.go & (wr_i < self.n_wr)),
                mem.wr_resp.ready.eq(take),
            ]
            m.d.sync += stalled.eq(mem.rd_req.valid & ~mem.rd_req.ready)
            data = Cat(*[(((wr_i << lb) + b) * 7 + 3)[:8] for b in range(Mb)])
            m.d.comb += [
                mem.wr_req.payload.addr.eq(self.wr_base + (wr_i << lb)),
                mem.wr_req.payload.data.eq(data),
                mem.wr_req.payload.strb.eq(((wr_i + 1) * Const(0x9D, 8))[:Mb]),
            ]
            with m.If(mem.rd_req.valid & mem.rd_req.ready):
                m.d.sync += [rd_i.eq(rd_i + 1), self.rq_cnt.eq(self.rq_cnt + 1),
                             self.rq_stamp.eq(self.cyc)]
            with m.If(mem.rd_resp.valid & mem.rd_resp.ready):
                m.d.sync += [self.rs_cnt.eq(self.rs_cnt + 1), self.rs_stamp.eq(self.cyc),
                             self.rs_data.eq(mem.rd_resp.payload)]
            with m.If(mem.wr_req.valid & mem.wr_req.ready):
                m.d.sync += [wr_i.eq(wr_i + 1), self.wq_cnt.eq(self.wq_cnt + 1),
                             self.wq_stamp.eq(self.cyc)]
            with m.If(mem.wr_resp.valid & mem.wr_resp.ready):
                m.d.sync += [self.ws_cnt.eq(self.ws_cnt + 1), self.ws_stamp.eq(self.cyc)]
            return m

    return LoopDut()


def expected_write(i: int) -> tuple[bytes, int]:
    """Data and strobes of the DUT's write ``i`` (mirrors the hardware)."""
    data = bytes(((i * M + b) * 7 + 3) & 0xFF for b in range(M))
    strb = (((i + 1) * 0x9D) & 0xFF) & ((1 << M) - 1)
    return data, strb


def resp_take(mode: int, cyc: int, hold: int = 0) -> bool:
    return [True, bool(cyc & 1), (cyc & 3) == 0, cyc >= hold][mode]


def oracle(n: int, start: int, latency: int, interval: int, depth: int, take) -> tuple[list, list]:
    """The contract of the memory model's docstring, for a requester that keeps ``valid``
    high from cycle ``start`` until ``n`` requests transferred and takes responses in the
    cycles where ``take(cycle)``: returns (request cycles, response cycles)."""
    queue: deque[int] = deque()
    last = None
    presenting = False
    reqs: list[int] = []
    resps: list[int] = []
    m = start
    while len(resps) < n:
        ready = (last is None or m - last >= interval) and len(queue) < depth
        if not presenting and queue and queue[0] <= m:
            presenting = True
        req_fire = ready and len(reqs) < n
        resp_fire = presenting and take(m)
        if resp_fire:
            queue.popleft()
            presenting = False
            resps.append(m)
        if req_fire:
            queue.append(m + latency)
            last = m
            reqs.append(m)
        m += 1
        assert m < start + 100000
    return reqs, resps


# -- cocotb side ------------------------------------------------------------------------

async def _setup(dut, seed: int = 1, **model_kw) -> tuple[MemoryModel, np.ndarray]:
    Clock(dut.clk, 10, unit="ns").start(start_high=False)
    dut.rst.value = 1
    for name in ("go", "n_rd", "rd_base", "n_wr", "wr_base", "resp_mode", "hold", "bad"):
        getattr(dut, name).value = 0
    MemoryModel.drive_idle(dut)
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    mem = np.random.default_rng(seed).integers(0, 256, MEM_SIZE, dtype=np.uint8)
    model = MemoryModel(dut, mem, mem_bytes=M, addr_width=CFG.addr_width, **model_kw)
    model.start()
    await RisingEdge(dut.clk)
    return model, mem


async def _exercise(dut, *, n_rd=0, rd_base=0, n_wr=0, wr_base=2048, resp_mode=0,
                    hold_after=0, bad=0, max_cycles=5000, model=None) -> dict:
    """Start the DUT and record every transfer's hardware stamp until all are done.

    ``go`` rises in cycle ``g`` (``rec["go"]``, in DUT ``cyc`` numbers); with
    ``resp_mode = 3`` responses are taken from cycle ``g + hold_after`` on (``rec["hold"]``).
    """
    await ReadOnly()
    now = int(dut.cyc.value)
    await RisingEdge(dut.clk)
    hold = now + 1 + hold_after
    dut.n_rd.value = n_rd
    dut.rd_base.value = rd_base
    dut.n_wr.value = n_wr
    dut.wr_base.value = wr_base
    dut.resp_mode.value = resp_mode
    dut.hold.value = hold
    dut.bad.value = bad
    dut.go.value = 1
    rec = {"go": None, "hold": hold, "rq": [], "rs": [], "rs_data": [], "wq": [], "ws": []}
    seen = dict.fromkeys(("rq", "rs", "wq", "ws"), 0)
    for _ in range(max_cycles):
        await ReadOnly()
        if rec["go"] is None:
            rec["go"] = int(dut.cyc.value)        # first cycle with go = 1
            assert rec["go"] == now + 1
        for k in seen:
            cnt = int(getattr(dut, f"{k}_cnt").value)
            if cnt != seen[k]:
                assert cnt == seen[k] + 1, f"{k}: two transfers in one cycle?"
                seen[k] = cnt
                rec[k].append(int(getattr(dut, f"{k}_stamp").value))
                if k == "rs":
                    rec["rs_data"].append(int(dut.rs_data.value))
        if seen["rs"] >= n_rd and seen["ws"] >= n_wr:
            break
        if model is not None and model.errors:
            break
        await RisingEdge(dut.clk)
    else:
        raise AssertionError(f"transfers incomplete after {max_cycles} cycles: {seen}")
    await RisingEdge(dut.clk)
    return rec


def _check_read_data(rec, mem_before: np.ndarray, rd_base: int) -> None:
    for i, d in enumerate(rec["rs_data"]):
        a = rd_base + i * M
        exp = int.from_bytes(mem_before[a:a + M].tobytes(), "little")
        assert d == exp, f"read {i} at {a:#x}: got {d:#x}, expected {exp:#x}"


def _register(fn, name: str):
    fn.__name__ = fn.__qualname__ = name
    globals()[name] = cocotb.test(name=name)(fn)


TIMING_CASES = [  # (latency, interval, depth, resp_mode)
    (1, 1, None, 0), (2, 1, None, 0), (20, 1, None, 0), (5, 3, None, 0), (3, 4, None, 0),
    (4, 1, 2, 0), (6, 1, 3, 1), (3, 2, None, 2), (8, 1, None, 3), (3, 1, 4, 3), (1, 1, 1, 0),
]


def _timing_test(latency, interval, depth, mode):
    async def t(dut):
        model, mem = await _setup(dut, latency=latency, interval=interval, depth=depth)
        before = mem.copy()
        n = 14
        rec = await _exercise(dut, n_rd=n, rd_base=64, resp_mode=mode, hold_after=30, model=model)
        d = latency + 1 if depth is None else depth
        reqs, resps = oracle(n, rec["go"], latency, interval, d,
                             lambda c: resp_take(mode, c, rec["hold"]))
        assert rec["rq"] == reqs, f"request cycles {rec['rq']}, contract {reqs}"
        assert rec["rs"] == resps, f"response cycles {rec['rs']}, contract {resps}"
        if mode == 0 and (depth is None or depth > latency):
            # the plain statement of the contract
            assert rec["rq"] == [rec["go"] + i * interval for i in range(n)]
            assert rec["rs"] == [s + latency for s in rec["rq"]]
        if mode == 3:   # nothing taken until `hold`: the bounded queue stops requests
            assert rec["rs"][0] == rec["hold"]
            assert rec["rq"][:d] == [rec["go"] + i for i in range(d)]
            assert rec["rq"][d] > rec["hold"]
        _check_read_data(rec, before, 64)
        assert not model.errors and model.idle
    _register(t, f"mm_timing_L{latency}_I{interval}_D{depth}_m{mode}")


for _c in TIMING_CASES:
    _timing_test(*_c)


def _write_test(latency, interval, wr_latency, mode):
    async def t(dut):
        model, mem = await _setup(dut, latency=latency, interval=interval, wr_latency=wr_latency)
        before = mem.copy()
        n = 20
        rec = await _exercise(dut, n_rd=n, rd_base=0, n_wr=n, wr_base=2048, resp_mode=mode,
                              model=model)
        lw = latency if wr_latency is None else wr_latency
        take = lambda c: resp_take(mode, c)  # noqa: E731
        reqs, resps = oracle(n, rec["go"], latency, interval, latency + 1, take)
        wreqs, wresps = oracle(n, rec["go"], lw, interval, lw + 1, take)
        assert (rec["rq"], rec["rs"]) == (reqs, resps), "reads"
        assert (rec["wq"], rec["ws"]) == (wreqs, wresps), "writes (independent of reads)"
        exp = before.copy()
        for i in range(n):
            data, strb = expected_write(i)
            for b in range(M):
                if strb >> b & 1:
                    exp[2048 + i * M + b] = data[b]
        diff = np.flatnonzero(exp != mem)
        assert diff.size == 0, f"memory differs at {[hex(a) for a in diff[:8]]}"
        assert any(expected_write(i)[1] not in (0, (1 << M) - 1) for i in range(n))
        _check_read_data(rec, before, 0)
    _register(t, f"mm_writes_L{latency}_I{interval}_W{wr_latency}_m{mode}")


for _c in [(4, 1, None, 0), (2, 2, 7, 0), (5, 1, 1, 1)]:
    _write_test(*_c)


@cocotb.test()
async def mm_read_after_write(dut):
    """A read transferred after a write (to the same beat) sees the written bytes."""
    model, mem = await _setup(dut, latency=2)
    await _exercise(dut, n_wr=6, wr_base=512, model=model)
    dut.go.value = 0
    dut.rst.value = 1           # restarts the DUT's counters; the model keeps running
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    snapshot = mem.copy()
    rec = await _exercise(dut, n_rd=6, rd_base=512, model=model)
    _check_read_data(rec, snapshot, 512)
    for i in range(6):
        data, strb = expected_write(i)
        got = rec["rs_data"][i].to_bytes(M, "little")
        assert all(got[b] == data[b] for b in range(M) if strb >> b & 1)


_RANDOM_STAMPS: dict = {}


def _random_bp_test(p, seed, tag):
    async def t(dut):
        model, mem = await _setup(dut, latency=4, interval=1, backpressure=p, seed=seed)
        before = mem.copy()
        rec = await _exercise(dut, n_rd=40, rd_base=128, n_wr=40, wr_base=2048, model=model)
        _check_read_data(rec, before, 128)
        rel = {k: [c - rec["go"] for c in rec[k]] for k in ("rq", "rs", "wq", "ws")}
        contract, _ = oracle(40, 0, 4, 1, 5, lambda c: True)
        assert rel["rq"] != contract, "random backpressure produced the no-stall schedule"
        assert all(r - q >= 4 for q, r in zip(rel["rq"], rel["rs"]))
        assert all(r - q >= 4 for q, r in zip(rel["wq"], rel["ws"]))
        prev = _RANDOM_STAMPS.setdefault(seed, rel)
        assert prev == rel, "the same seed gave a different schedule"
    _register(t, f"mm_random_p{int(p * 100)}_s{seed}_{tag}")


for _c in [(0.3, 5, "a"), (0.3, 5, "b"), (0.6, 9, "a")]:
    _random_bp_test(*_c)


def _error_test(name, model_kw, ex_kw, needle):
    async def t(dut):
        model, _ = await _setup(dut, on_error="record", **model_kw)
        await _exercise(dut, model=model, max_cycles=200, **ex_kw)
        assert model.errors, "no error reported"
        assert needle in model.errors[0], model.errors
        dut._log.info("reported as expected: %s", model.errors[0])
    _register(t, name)


for _name, _mk, _ek, _needle in [
    ("mm_err_payload_change", {"interval": 3}, {"n_rd": 5, "bad": 1}, "payload changed"),
    ("mm_err_valid_drop", {"interval": 3}, {"n_rd": 5, "bad": 2}, "valid dropped"),
    ("mm_err_read_outside", {}, {"n_rd": 3, "rd_base": MEM_SIZE - M}, f"{MEM_SIZE:#x}"),
    ("mm_err_write_outside", {}, {"n_wr": 3, "wr_base": MEM_SIZE - 2 * M}, "write address"),
    ("mm_err_unaligned", {}, {"n_rd": 2, "rd_base": 3}, "not aligned"),
]:
    _error_test(_name, _mk, _ek, _needle)


@cocotb.test(expect_error=MemoryModelError)
async def mm_err_raises(dut):
    """By default a protocol error fails the running test (raised in the model's task)."""
    model, _ = await _setup(dut, interval=3)
    await _exercise(dut, n_rd=5, bad=1, max_cycles=100)


COCOTB_TESTS = [n for n in list(globals()) if n.startswith("mm_")]


# -- pytest side ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mm_results(tmp_path_factory):
    from amaranth.back import verilog
    from fluidnpu.hw.runner import build_design, run_cocotb

    src = Path(__file__).read_bytes()
    import hashlib
    key = f"{CFG.key()}|{hashlib.sha256(src).hexdigest()}"
    bdir = build_design("icarus", TOP, key, lambda: verilog.convert(make_dut(CFG), name=TOP))
    run_dir = tmp_path_factory.mktemp("mm")
    return run_cocotb("icarus", bdir, TOP, Path(__file__).stem, run_dir)


@pytest.mark.rtl
@pytest.mark.parametrize("name", COCOTB_TESTS)
def test_memory_model(mm_results, name):
    assert name in mm_results, f"cocotb test {name} did not run; ran: {sorted(mm_results)}"
    assert mm_results[name] is None, mm_results[name]


def test_oracle_plain_contract():
    """The oracle itself: no stalls -> request every interval, response latency later."""
    reqs, resps = oracle(5, 10, 7, 2, 8, lambda c: True)
    assert reqs == [10, 12, 14, 16, 18]
    assert resps == [17, 19, 21, 23, 25]
    # depth 1: one outstanding read at a time -> a new request the cycle after a response
    reqs, resps = oracle(3, 0, 2, 1, 1, lambda c: True)
    assert reqs == [0, 3, 6] and resps == [2, 5, 8]
