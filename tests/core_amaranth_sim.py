"""Run the NPU core in the Amaranth simulator with a Python memory model (small configs)."""
from collections import deque

import numpy as np
from amaranth.hdl import Array, Const, Elaboratable, Module
from amaranth.sim import Simulator

from fluidnpu.hw.core import NPUCore
from fluidnpu.hw.layout import gemm_image


class _GatherTable(Elaboratable):
    """The core with a constant X gather table answering its ``gather`` port."""

    def __init__(self, cfg, table):
        self.core = NPUCore(cfg)
        self.table = table
        self.cmd, self.mem, self.busy = self.core.cmd, self.core.mem, self.core.busy

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = self.core
        arr = Array(Const(a, 32) for a in self.table)
        m.d.comb += self.core.gather.addr.eq(arr[self.core.gather.idx[:max(1, (len(self.table) - 1).bit_length())]])
        return m


def run_core(cfg, x, w, bias=None, *, out_mode=0, mult=1, shift=0, relu=False, bp=1, k=1,
             latency=3, max_cycles=200000, vcd=None, img=None, gather=None, rs=0):
    """``img``: a prepared image (default: ``gemm_image``); ``gather``: X base address per
    sample for a descriptor with ``rs`` rows per sample."""
    img = img or gemm_image(cfg, x, w, bias, out_mode=out_mode)
    desc = {**img.desc_dict(mult=mult, shift=shift, relu=relu, bp=bp, k=k), "rs": rs}
    mem, cycles = _run(cfg, img.mem.copy(), [desc], latency=latency, max_cycles=max_cycles,
                       vcd=vcd, gather=gather)
    return img.read_out(mem), cycles[0], img, mem


def run_core_layers(cfg, layers, *, latency=3, max_cycles=200000):
    """Run several layers one after another in one simulation (the buffers keep what the
    earlier layers left). ``layers``: dicts with ``x``, ``w`` and optionally ``bias``,
    ``bp``, ``k``; each laid out after the previous one in one memory. Returns per layer
    (output, cycles, image) and the final memory."""
    imgs, descs, base = [], [], 0
    for ly in layers:
        img = gemm_image(cfg, ly["x"], ly["w"], ly.get("bias"), base=base, seed=len(imgs))
        imgs.append(img)
        descs.append({**img.desc_dict(mult=1, shift=0, relu=False, bp=ly.get("bp", 1),
                                      k=ly.get("k", 1)), "rs": 0})
        base = len(img.mem)
    mem = imgs[-1].mem.copy()
    for i, img in enumerate(imgs):  # each image's own bytes, from its base on
        lo = 0 if i == 0 else len(imgs[i - 1].mem)
        mem[lo:len(img.mem)] = img.mem[lo:]
    mem, cycles = _run(cfg, mem, descs, latency=latency, max_cycles=max_cycles)
    return [(img.read_out(mem), c, img) for img, c in zip(imgs, cycles)], mem


def _run(cfg, mem, descs, *, latency, max_cycles, vcd=None, gather=None):
    """Issue ``descs`` one after another (each once the core is idle) against a memory
    model with ``latency`` cycles; returns the memory and each command's cycle count."""
    dut = NPUCore(cfg) if gather is None else _GatherTable(cfg, gather)
    M = cfg.mem_bytes
    cycles = []

    async def tb(ctx):
        rq = deque()   # (ready_cycle, data)
        wq = deque()
        ctx.set(dut.mem.rd_req.ready, 1)
        ctx.set(dut.mem.wr_req.ready, 1)
        for desc in descs:
            ctx.set(dut.cmd.payload, desc)
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick()
            ctx.set(dut.cmd.valid, 0)
            cyc = 0
            for cyc in range(max_cycles):
                # present responses
                if rq and rq[0][0] <= cyc:
                    ctx.set(dut.mem.rd_resp.valid, 1)
                    ctx.set(dut.mem.rd_resp.payload, rq[0][1])
                else:
                    ctx.set(dut.mem.rd_resp.valid, 0)
                ctx.set(dut.mem.wr_resp.valid, 1 if (wq and wq[0] <= cyc) else 0)
                rv, ra = ctx.get(dut.mem.rd_req.valid), ctx.get(dut.mem.rd_req.payload)
                wv = ctx.get(dut.mem.wr_req.valid)
                rr = ctx.get(dut.mem.rd_resp.ready) and ctx.get(dut.mem.rd_resp.valid)
                wa = ctx.get(dut.mem.wr_resp.valid)
                if wv:
                    p = ctx.get(dut.mem.wr_req.payload)
                    addr, data, strb = int(p.addr), int(p.data), int(p.strb)
                busy = ctx.get(dut.busy)
                await ctx.tick()
                if rv:
                    assert ra % M == 0 and ra + M <= len(mem), hex(ra)
                    rq.append((cyc + latency, int.from_bytes(mem[ra:ra + M].tobytes(), "little")))
                if rr:
                    rq.popleft()
                if wa:
                    wq.popleft()
                if wv:
                    assert addr % M == 0 and addr + M <= len(mem), hex(addr)
                    for b in range(M):
                        if strb >> b & 1:
                            mem[addr + b] = (data >> (8 * b)) & 0xFF
                    wq.append(cyc + latency)
                if cyc > 2 and not busy:
                    break
            else:
                raise AssertionError(f"the core is still busy after max_cycles = {max_cycles} cycles")
            assert not rq and not wq, "the core went idle with memory transfers outstanding"
            cycles.append(cyc)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return mem, cycles
