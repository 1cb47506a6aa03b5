"""A cocotb Wishbone B4 *pipelined* memory slave (byte memory behind ``<prefix>__adr`` ...).

Why not cocotbext-wishbone's ``WishboneSlave``: its read data come from a generator that
does not see the address (it cannot be a memory), and it waits for each ACK before it
looks at the next request, so a master issuing one request per cycle is not served (its
``WishboneMaster`` is fine and drives the CSR port in the benches). This model keeps
the timing contract of :class:`~fluidnpu.hw.tb.memory.MemoryModel` on one shared
channel, so a run through the bus can be compared with the bare core on "the same
memory":

* cycles are numbered from the first rising edge after :meth:`start`; a request is
  *taken* in cycle ``n`` when ``CYC & STB & !STALL`` during cycle ``n``;
* ``STALL`` (registered) is 1 in cycle ``m`` iff a request was taken in cycles
  ``m-I+1 .. m-1`` (``I = interval``: at most one request every ``I`` cycles), or
  ``depth`` requests are outstanding at the start of cycle ``m`` (taken, not yet
  answered; default ``latency + 1``, which never throttles), or a random stall (below);
* a read taken in cycle ``n`` returns the memory as it is then (a write is applied when
  taken); its ACK (with ``DAT_R``) is due in cycle ``n + latency``, a write's in cycle
  ``n + wr_latency``; ACKs are in request order, at most one per cycle: ACK is 1 in cycle
  ``m`` iff the oldest unanswered request is due (``<= m``) and no random gap;
* random backpressure ``p`` (seeded): STALL forced high, and a due ACK held back, each
  with probability ``p`` per cycle.

Reads and writes share one queue (Wishbone answers in order), unlike the bare model's
two channels. Checks (:class:`~fluidnpu.hw.tb.memory.MemoryModelError`): X/Z on CYC, STB
or a needed field, STB without CYC, a stalled request whose address, WE, data or SEL
change or which is withdrawn, addresses outside the memory, CYC dropped with answers
outstanding.
"""
from __future__ import annotations

import random
from collections import deque

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from .memory import MemoryModelError

__all__ = ["WishboneMemory"]


class WishboneMemory:
    """Serve ``mem`` (numpy uint8, updated in place by writes) to the Wishbone master
    ``<prefix>__*`` of ``dut`` (word addresses, ``mem_bytes`` bytes per word)."""

    def __init__(self, dut, mem: np.ndarray, *, mem_bytes: int, latency: int = 20,
                 wr_latency: int | None = None, interval: int = 1, depth: int | None = None,
                 backpressure: float = 0.0, seed: int = 0, prefix: str = "bus"):
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"wishbone memory: latency = {latency!r}: must be an integer >= 1")
        wr_latency = latency if wr_latency is None else wr_latency
        if not isinstance(wr_latency, int) or wr_latency < 1:
            raise ValueError(f"wishbone memory: wr_latency = {wr_latency!r}: must be an integer >= 1")
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"wishbone memory: interval = {interval!r}: must be an integer >= 1")
        depth = max(latency, wr_latency) + 1 if depth is None else depth
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"wishbone memory: depth = {depth!r}: must be an integer >= 1")
        if not 0.0 <= float(backpressure) < 1.0:
            raise ValueError(f"wishbone memory: backpressure = {backpressure!r}: must be in [0, 1)")
        if mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError("wishbone memory: mem must be a 1-D numpy uint8 array")
        self.dut, self.mem, self.M = dut, mem, int(mem_bytes)
        self.latency, self.wr_latency, self.interval, self.depth = latency, wr_latency, interval, depth
        self.backpressure = float(backpressure)
        self.rng = random.Random(seed)
        self.cycle = -1
        self.queue: deque = deque()          # (due, data) per request taken, in order
        self.last_take: int | None = None
        self.stall = 1
        self.ack = 0
        self.held: tuple | None = None       # a request seen while stalled
        self.reads = self.writes = self.answers = 0
        self._task = None
        p = prefix + "__"
        self.s = {n: getattr(dut, p + n) for n in
                  ("cyc", "stb", "we", "adr", "dat_w", "sel", "dat_r", "ack", "err", "stall")}
        self._edge = RisingEdge(dut.clk)

    @staticmethod
    def drive_idle(dut, prefix: str = "bus") -> None:
        for n in ("dat_r", "ack", "err"):
            getattr(dut, f"{prefix}__{n}").value = 0
        getattr(dut, f"{prefix}__stall").value = 1

    def start(self):
        if self._task is not None:
            raise RuntimeError("wishbone memory already started")
        self._task = cocotb.start_soon(self._run())
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def idle(self) -> bool:
        return not self.queue

    @property
    def stats(self) -> dict:
        return {"cycle": self.cycle, "reads": self.reads, "writes": self.writes, "answers": self.answers}

    # -- internals --------------------------------------------------------------------
    def _fail(self, msg: str):
        raise MemoryModelError(f"wishbone memory, cycle {self.cycle}: {msg}")

    def _int(self, name: str) -> int:
        v = self.s[name].value
        try:
            return int(v)
        except ValueError:
            self._fail(f"{name.upper()} has X/Z bits: {v}")

    def _sample(self):
        """At ReadOnly of a cycle: the request taken in it, or None."""
        cyc, stb = self._int("cyc"), self._int("stb")
        if stb and not cyc:
            self._fail("STB high without CYC")
        if not cyc and self.queue:
            self._fail(f"CYC dropped with {len(self.queue)} answer(s) outstanding")
        req = None
        if stb:
            we = self._int("we")
            req = (we, self._int("adr"), self._int("sel"), self._int("dat_w") if we else 0)
        if self.held is not None and req != self.held:
            self._fail(f"a stalled request changed or was withdrawn: {self.held} -> {req}")
        self.held = req if (req is not None and self.stall) else None
        return req if (req is not None and not self.stall) else None

    def _take(self, n: int, req) -> None:
        we, adr, sel, dat = req
        addr = adr * self.M
        if addr + self.M > self.mem.size:
            self._fail(f"{'write' if we else 'read'} at word {adr:#x} (byte {addr:#x}) outside the "
                       f"memory ({self.mem.size} bytes)")
        self.last_take = n
        if we:
            self.writes += 1
            for b in range(self.M):
                if (sel >> b) & 1:
                    self.mem[addr + b] = (dat >> (8 * b)) & 0xFF
            self.queue.append((n + self.wr_latency, 0))
        else:
            self.reads += 1
            data = int.from_bytes(self.mem[addr:addr + self.M].tobytes(), "little")
            self.queue.append((n + self.latency, data))

    def _random(self) -> bool:
        return self.backpressure > 0.0 and self.rng.random() < self.backpressure

    def _decide(self) -> None:
        m = self.cycle
        stall = not ((self.last_take is None or m - self.last_take >= self.interval)
                     and len(self.queue) < self.depth)
        if not stall and self._random():
            stall = True
        self.stall = int(stall)
        self.s["stall"].value = self.stall
        self.ack = int(bool(self.queue) and self.queue[0][0] <= m and not self._random())
        self.s["ack"].value = self.ack
        self.s["dat_r"].value = self.queue[0][1] if self.ack else 0

    async def _run(self) -> None:
        await self._edge
        self.cycle = 0
        self._decide()
        while True:
            await ReadOnly()
            req = self._sample()
            answered = self.ack
            await self._edge
            n = self.cycle
            self.cycle = n + 1
            if answered:
                self.queue.popleft()
                self.answers += 1
            if req is not None:
                self._take(n, req)
            self._decide()
