"""A cocotb model of the core's off-chip memory (the four streams of ``mem_port_signature``).

Timing contract (the cycle model reproduces exactly this)
--------------------------------------------------------

Cycles are numbered from the first rising edge after :meth:`MemoryModel.start`: cycle
``n`` is the clock period that begins at rising edge ``n``. A stream *transfers in cycle
n* when ``valid`` and ``ready`` are both 1 during cycle ``n`` (the DUT registers it at
edge ``n+1``). The model samples everything just before edge ``n+1`` and drives its
outputs for cycle ``n+1`` right after that edge, so all of the model's outputs
(``rd_req.ready``, ``rd_resp.valid/payload``, ``wr_req.ready``, ``wr_resp.valid``) are
registered: none depends combinationally on a DUT output of the same cycle.

Reads, with ``L = latency``, ``I = interval``, ``D = depth``:

* ``rd_req.ready`` in cycle ``m`` is 1 iff (a) no read request transferred in cycles
  ``m-I+1 .. m-1`` (so at most one every ``I`` cycles: ``M/I`` bytes per cycle),
  (b) fewer than ``D`` reads are *outstanding* at the start of cycle ``m`` (transferred
  in a cycle ``< m`` and their response not yet transferred in a cycle ``< m``), and
  (c) no random stall (below). With ``I = 1`` and no stalls ``ready`` is 1 whenever
  the queue has room; the default ``D = L + 1`` never throttles a DUT that keeps
  ``rd_resp.ready`` high.
* A request transferred in cycle ``n`` has its response data captured from memory at
  that moment (writes transferred in the same cycle ``n`` are *not* visible to it; writes
  of cycles ``< n`` are) and is *due* in cycle ``n + L`` (``L >= 1``).
* Responses are in request order. ``rd_resp.valid`` rises in cycle ``m`` for the oldest
  untransferred response iff it is due (``m >= n + L``), no response is currently being
  presented, and no random gap (below); once raised, ``valid`` and ``payload`` hold
  until the DUT takes it (``rd_resp.ready`` in that cycle). After a response transfers in
  cycle ``m`` the next one may be valid from cycle ``m+1``.
* Hence, with no stalls and a DUT that always accepts: **request transferred in cycle n
  -> response valid in cycle n+L** (equivalently: request registered at edge ``t`` ->
  response registered at edge ``t+L`` at the earliest), and back-to-back requests every
  ``I`` cycles give back-to-back responses every ``I`` cycles.

Writes, the same with ``Lw = wr_latency`` (default ``L``), ``I`` and ``Dw = wr_depth``
(default ``Lw + 1``), independently of reads (separate channels): the write is applied to
memory (honouring ``strb``) when it transfers in cycle ``n``; its acknowledgement
``wr_resp`` (payload 0) is due in cycle ``n + Lw`` and presented in order like a read
response.

Random backpressure (``backpressure = p > 0``, seeded ``random.Random(seed)``): in every
cycle, ``rd_req.ready`` and ``wr_req.ready`` are additionally forced low with probability
``p`` each, and a due response (read or write) that could be raised is held back with
probability ``p``. With ``p = 0`` no random number is drawn and the timing is exactly the
contract above. The random sequence depends only on the seed and the DUT's behaviour, so
runs are reproducible.

Checks (each fails the test with a :class:`MemoryModelError` naming the stream, cycle and
values): a request whose ``valid`` drops, or whose payload changes, while ``valid`` is
high and ``ready`` low; ``valid`` or a needed payload with X/Z bits; read or write
addresses that are not beat-aligned or fall outside the memory.
"""
from __future__ import annotations

import random
from collections import deque

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["MemoryModel", "MemoryModelError"]


class MemoryModelError(AssertionError):
    """The DUT broke the memory protocol (or the model's bounds)."""


class _Resp:
    __slots__ = ("due", "data", "addr", "accepted")

    def __init__(self, due: int, data: int, addr: int, accepted: int):
        self.due = due
        self.data = data
        self.addr = addr
        self.accepted = accepted


class _Channel:
    """One request/response pair (read or write): queue, throttle and presentation state."""

    def __init__(self, name: str, latency: int, depth: int):
        self.name = name
        self.latency = latency
        self.depth = depth
        self.queue: deque[_Resp] = deque()
        self.last_accept: int | None = None
        self.presenting = False
        self.req_ready = 0
        self.pending_payload: int | None = None   # payload seen with valid & !ready
        self.accepted = 0
        self.completed = 0


class MemoryModel:
    """Byte memory behind the four streams ``<prefix>__{rd,wr}_{req,resp}__*`` of ``dut``.

    ``mem`` is a numpy ``uint8`` array and is updated in place by writes. ``addr_width`` and
    ``mem_bytes`` give the payload layouts (``wr_req`` is ``addr | data << aw | strb <<
    (aw + 8*M)``, as :func:`fluidnpu.hw.interface.wr_req_layout`). See the module docstring
    for the exact timing. ``on_error="record"`` collects errors in :attr:`errors` instead
    of failing the test (for tests of the checks themselves).
    """

    def __init__(self, dut, mem: np.ndarray, *, mem_bytes: int, addr_width: int,
                 latency: int = 20, interval: int = 1, backpressure: float = 0.0,
                 seed: int = 0, wr_latency: int | None = None, depth: int | None = None,
                 wr_depth: int | None = None, prefix: str = "mem", clk=None,
                 on_error: str = "raise", record: bool = False):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"memory model: latency = {latency!r}: must be an integer >= 1")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"memory model: interval = {interval!r}: must be an integer >= 1")
        if not 0.0 <= float(backpressure) < 1.0:
            raise ValueError(f"memory model: backpressure = {backpressure!r}: must be in [0, 1)")
        wr_latency = latency if wr_latency is None else wr_latency
        if not isinstance(wr_latency, int) or wr_latency < 1:
            raise ValueError(f"memory model: wr_latency = {wr_latency!r}: must be an integer >= 1")
        depth = latency + 1 if depth is None else depth
        wr_depth = wr_latency + 1 if wr_depth is None else wr_depth
        for name, v in (("depth", depth), ("wr_depth", wr_depth)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"memory model: {name} = {v!r}: must be an integer >= 1")
        if on_error not in ("raise", "record"):
            raise ValueError(f"memory model: on_error = {on_error!r}: 'raise' or 'record'")
        self.dut = dut
        self.mem = mem
        if mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError("memory model: mem must be a 1-D numpy uint8 array")
        self.M = int(mem_bytes)
        self.aw = int(addr_width)
        self.interval = interval
        self.backpressure = float(backpressure)
        self.rng = random.Random(seed)
        self.on_error = on_error
        self.errors: list[str] = []
        self.events: list[tuple] | None = [] if record else None
        self.cycle = -1
        self.rd = _Channel("rd", latency, depth)
        self.wr = _Channel("wr", wr_latency, wr_depth)
        self._task = None
        clk = clk if clk is not None else dut.clk
        self._edge = RisingEdge(clk)
        p = prefix + "__"
        self.s_rq_valid = getattr(dut, p + "rd_req__valid")
        self.s_rq_ready = getattr(dut, p + "rd_req__ready")
        self.s_rq_payload = getattr(dut, p + "rd_req__payload")
        self.s_rs_valid = getattr(dut, p + "rd_resp__valid")
        self.s_rs_ready = getattr(dut, p + "rd_resp__ready")
        self.s_rs_payload = getattr(dut, p + "rd_resp__payload")
        self.s_wq_valid = getattr(dut, p + "wr_req__valid")
        self.s_wq_ready = getattr(dut, p + "wr_req__ready")
        self.s_wq_payload = getattr(dut, p + "wr_req__payload")
        self.s_ws_valid = getattr(dut, p + "wr_resp__valid")
        self.s_ws_ready = getattr(dut, p + "wr_resp__ready")
        self.s_ws_payload = getattr(dut, p + "wr_resp__payload")
        self._driven: dict = {}
        self.prefix = prefix

    # -- public -----------------------------------------------------------------------
    @staticmethod
    def drive_idle(dut, prefix: str = "mem") -> None:
        """Drive the model's outputs to 0 (use while the DUT is in reset)."""
        p = prefix + "__"
        for n in ("rd_req__ready", "rd_resp__valid", "rd_resp__payload", "wr_req__ready",
                  "wr_resp__valid", "wr_resp__payload"):
            getattr(dut, p + n).value = 0

    def start(self):
        """Start serving (call from a running test); returns the cocotb Task."""
        if self._task is not None:
            raise RuntimeError("memory model already started")
        self._task = cocotb.start_soon(self._run())
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.drive_idle(self.dut, self.prefix)

    @property
    def idle(self) -> bool:
        """No read or write is outstanding (every response has been transferred)."""
        return not self.rd.queue and not self.wr.queue

    @property
    def stats(self) -> dict:
        return {"cycle": self.cycle, "reads": self.rd.accepted, "read_responses": self.rd.completed,
                "writes": self.wr.accepted, "write_acks": self.wr.completed}

    def read_bytes(self, addr: int, n: int) -> bytes:
        return self.mem[addr: addr + n].tobytes()

    # -- internals --------------------------------------------------------------------
    def _fail(self, msg: str) -> None:
        msg = f"memory model, cycle {self.cycle}: {msg}"
        self.errors.append(msg)
        if self.on_error == "raise":
            raise MemoryModelError(msg)

    def _drive(self, sig, value: int) -> None:
        if self._driven.get(sig) != value:
            sig.value = value
            self._driven[sig] = value

    def _read_int(self, sig, what: str) -> int | None:
        v = sig.value
        try:
            return int(v)
        except ValueError:
            self._fail(f"{what} has X/Z bits: {v}")
            return None

    def _check_addr(self, ch: str, addr: int) -> bool:
        if addr % self.M:
            self._fail(f"{ch} address {addr:#x} is not aligned to the {self.M}-byte beat")
            return False
        if addr + self.M > self.mem.size:
            self._fail(f"{ch} address {addr:#x} is outside the memory "
                       f"(0x0 .. {self.mem.size - 1:#x}, {self.mem.size} bytes)")
            return False
        return True

    def _sample_req(self, ch: _Channel, s_valid, s_payload) -> tuple[bool, int | None]:
        """At ReadOnly of cycle n: did the request transfer, and with which payload."""
        valid = self._read_int(s_valid, f"{ch.name}_req.valid")
        if valid is None:
            return False, None
        payload = None
        if valid:
            payload = self._read_int(s_payload, f"{ch.name}_req.payload")
        if ch.pending_payload is not None:
            if not valid:
                self._fail(f"{ch.name}_req.valid dropped before the transfer "
                           f"(payload {ch.pending_payload:#x} was offered while ready was low)")
            elif payload is not None and payload != ch.pending_payload:
                self._fail(f"{ch.name}_req.payload changed from {ch.pending_payload:#x} to "
                           f"{payload:#x} while valid was high and ready low")
        if valid and not ch.req_ready:
            ch.pending_payload = payload
        else:
            ch.pending_payload = None
        return bool(valid and ch.req_ready), payload

    async def _run(self) -> None:
        await self._edge
        self.cycle = 0
        self._driven.clear()
        self._drive(self.s_ws_payload, 0)
        self._decide()
        while True:
            await ReadOnly()
            rd_fire, rd_payload = self._sample_req(self.rd, self.s_rq_valid, self.s_rq_payload)
            wr_fire, wr_payload = self._sample_req(self.wr, self.s_wq_valid, self.s_wq_payload)
            rs_fire = self.rd.presenting and bool(self._read_int(self.s_rs_ready, "rd_resp.ready"))
            ws_fire = self.wr.presenting and bool(self._read_int(self.s_ws_ready, "wr_resp.ready"))
            await self._edge
            n = self.cycle
            self.cycle = n + 1
            self._apply(n, rd_fire, rd_payload, wr_fire, wr_payload, rs_fire, ws_fire)
            self._decide()

    def _apply(self, n, rd_fire, rd_payload, wr_fire, wr_payload, rs_fire, ws_fire) -> None:
        """Start of cycle n+1: apply the transfers of cycle n."""
        ev = self.events
        if rs_fire:
            r = self.rd.queue.popleft()
            self.rd.presenting = False
            self.rd.completed += 1
            if ev is not None:
                ev.append(("rd_resp", n, r.addr))
        if ws_fire:
            r = self.wr.queue.popleft()
            self.wr.presenting = False
            self.wr.completed += 1
            if ev is not None:
                ev.append(("wr_resp", n, r.addr))
        if rd_fire:
            addr = rd_payload
            self.rd.last_accept = n
            self.rd.accepted += 1
            if self._check_addr("read", addr):
                data = int.from_bytes(self.mem[addr: addr + self.M].tobytes(), "little")
            else:
                data = 0
            self.rd.queue.append(_Resp(n + self.rd.latency, data, addr, n))
            if ev is not None:
                ev.append(("rd_req", n, addr))
        if wr_fire:
            aw, M = self.aw, self.M
            addr = wr_payload & ((1 << aw) - 1)
            data = (wr_payload >> aw) & ((1 << (8 * M)) - 1)
            strb = (wr_payload >> (aw + 8 * M)) & ((1 << M) - 1)
            self.wr.last_accept = n
            self.wr.accepted += 1
            if self._check_addr("write", addr):
                if strb == (1 << M) - 1:
                    self.mem[addr: addr + M] = np.frombuffer(data.to_bytes(M, "little"), np.uint8)
                else:
                    for b in range(M):
                        if (strb >> b) & 1:
                            self.mem[addr + b] = (data >> (8 * b)) & 0xFF
            self.wr.queue.append(_Resp(n + self.wr.latency, 0, addr, n))
            if ev is not None:
                ev.append(("wr_req", n, addr, data, strb))

    def _stall(self) -> bool:
        return self.backpressure > 0.0 and self.rng.random() < self.backpressure

    def _decide(self) -> None:
        """Drive the outputs for cycle ``self.cycle``."""
        m = self.cycle
        for ch, s_ready, s_valid, s_payload in (
                (self.rd, self.s_rq_ready, self.s_rs_valid, self.s_rs_payload),
                (self.wr, self.s_wq_ready, self.s_ws_valid, self.s_ws_payload)):
            ready = ((ch.last_accept is None or m - ch.last_accept >= self.interval)
                     and len(ch.queue) < ch.depth)
            if ready and self._stall():
                ready = False
            ch.req_ready = int(ready)
            self._drive(s_ready, ch.req_ready)
            if not ch.presenting and ch.queue and ch.queue[0].due <= m and not self._stall():
                ch.presenting = True
                if ch is self.rd:
                    self._drive(s_payload, ch.queue[0].data)
            self._drive(s_valid, int(ch.presenting))
