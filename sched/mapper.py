"""The policy mapper: for every (batch size, layer) the policy <B_R, B_P, k> with the fewest
cycles, from the cycle model (which equals the RTL cycle for cycle).

* ``B_R``: samples stacked along R in one GEMM command (the batch runs as
  ``ceil(b / B_R)`` commands of ``B_R`` samples); ``B_P`` and ``k`` as in the hardware.
* Hardware variants restrict the search: ``rbatch`` (R-batching only: B_P = k = 1),
  ``stack`` (B_P = 1, any k), ``fluid`` (every legal policy).
* A grouped convolution (``groups = G``) runs as G GEMMs of ``c / G`` columns; a command
  whose R exceeds the descriptor's ``dim_width`` is split into several.

Layers run with bias and requantised int8 output (a folded batch-norm and the next
layer's input format), as a deployed network would.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fluidnpu.hw.config import HwConfig
from fluidnpu.hw.interface import OUT_REQUANT
from fluidnpu.hw.layout import compulsory_traffic
from fluidnpu.hw.runner import MemTiming
from fluidnpu.sim.cycle_model import layer_cycles
from fluidnpu.sim.fbe_model import (ENTRY_POST, ENTRY_PRE, EXIT_POST, REQ_CYCLES, alloc_cycles, exit_leave_extra,
                                    exit_test_cycles, merge_cycles)
from fluidnpu.sim.latency import LatencyTable
from fluidnpu.sim.traffic import tiled_traffic
from fluidnpu.sim.workloads.model import EEModel, GemmLayer

__all__ = ["HARDWARE", "MapperError", "LayerPlan", "ModelPlan", "plan_layer", "map_model", "rows_per_descriptor",
           "check_descriptor_fields", "descriptor_splits",
           "policies_for", "FBE_ENTRY_BYTES"]

HARDWARE = ("rbatch", "stack", "fluid")
FBE_ENTRY_BYTES = 2


class MapperError(ValueError):
    """A bad mapper argument; the message names the field, the value and what is allowed."""


def policies_for(cfg: HwConfig, hardware: str) -> list[tuple[int, int]]:
    """The (B_P, k) choices a hardware variant offers."""
    if hardware == "rbatch":
        return [(1, 1)]
    if hardware == "stack":
        return [(1, k) for k in cfg.k_choices]
    if hardware == "fluid":
        return list(cfg.policies)
    raise MapperError(f"hardware = {hardware!r}: must be one of {', '.join(HARDWARE)}")


def _br_choices(b: int) -> list[int]:
    return sorted({b} | {1 << i for i in range(b.bit_length()) if (1 << i) < b})


@dataclass(frozen=True)
class LayerPlan:
    """The chosen policy of one layer at one batch size, and what it costs."""
    name: str
    batch: int
    policy: tuple[int, int, int]      #: (B_R, B_P, k)
    cycles: int                       #: the core's cycles (sum over the layer's GEMM commands)
    macs: int
    commands: int                     #: GEMM commands issued for the layer
    roofline_cycles: int
    utilisation: float
    roofline_efficiency: float
    fbe_cycles: int = 0               #: the FBE's own cycles around the commands (sim.fbe_model)
    #: the roofline of the traffic the chosen tiling really moves (sim.traffic), >= roofline_cycles
    roofline_cycles_tiled: int = 0
    bound_tiled: str = "compute"      #: what sets roofline_cycles_tiled: "compute" or "memory"

    @property
    def total_cycles(self) -> int:
        """The entry on the NPU with its FBE: core cycles plus the FBE's."""
        return self.cycles + self.fbe_cycles

    def to_dict(self) -> dict:
        return {"name": self.name, "batch": self.batch, "policy": list(self.policy),
                "cycles": self.total_cycles, "core_cycles": self.cycles, "fbe_cycles": self.fbe_cycles,
                "macs": self.macs, "commands": self.commands,
                "utilisation": self.utilisation, "roofline_cycles": self.roofline_cycles,
                "roofline_efficiency": self.roofline_efficiency,
                "roofline_cycles_tiled": self.roofline_cycles_tiled, "bound_tiled": self.bound_tiled}


def rows_per_descriptor(cfg: HwConfig) -> int:
    """Rows of X one GEMM command takes at most: the R field's largest multiple of ``tr``."""
    return ((1 << cfg.dim_width) - 1) // cfg.tr * cfg.tr


def check_descriptor_fields(cfg: HwConfig, layer: GemmLayer) -> None:
    """Refuse a layer whose P or C (per group) does not fit a layer descriptor's
    ``dim_width``-bit field: the core cannot run it. (R is no limit: rows are split over
    several commands, :func:`descriptor_splits`.)"""
    limit = (1 << cfg.dim_width) - 1
    where = f"layer {layer.name!r}"
    tail = f"holds at most {limit:,} (dim_width = {cfg.dim_width} bits), so the hardware cannot run this layer"
    if layer.p > limit:
        raise MapperError(f"{where}: p = {layer.p:,}: a layer descriptor's P field {tail} (a reduction is not "
                          f"split over descriptors); raise dim_width or split the layer in the model")
    cg = layer.c // layer.groups
    if cg > limit:
        what = f"c = {layer.c:,}" if layer.groups == 1 else f"c / groups = {cg:,}"
        raise MapperError(f"{where}: {what}: a layer descriptor's C field {tail} (output columns are not split "
                          f"over descriptors); raise dim_width or split the layer in the model")


def descriptor_splits(cfg: HwConfig, rows: int) -> int:
    """Commands a GEMM of ``rows`` rows is split into (1: it fits one descriptor)."""
    return -(-rows // rows_per_descriptor(cfg))


def _descriptor_rows(cfg: HwConfig, R: int) -> list[tuple[int, int]]:
    """One GEMM of R rows as commands, split at the descriptor's limit: ``(rows, count)``."""
    rmax = rows_per_descriptor(cfg)
    full, rest = divmod(R, rmax)
    return [(rows, n) for rows, n in ((rmax, full), (rest, 1 if rest else 0)) if n]


def _command_cycles(cfg, R, p, c, bp, k, mem) -> tuple[int, int]:
    """Cycles and command count of one GEMM of R rows, split at the descriptor's limit."""
    parts = _descriptor_rows(cfg, R)
    cyc = sum(n * layer_cycles(cfg, rows, p, c, bp=bp, k=k, bias=True, out_mode=OUT_REQUANT, mem=mem)
              for rows, n in parts)
    return cyc, sum(n for _, n in parts)


def _roofline(cfg: HwConfig, R: int, p: int, c: int, groups: int) -> int:
    """The compulsory roofline of ``groups`` GEMMs of ``R x p x c/groups`` (bias,
    requantised): the MAC array's cycles or the busier memory channel's beats."""
    rd, wr = compulsory_traffic(cfg, R, p, c // groups, True, OUT_REQUANT)
    M = cfg.mem_bytes
    return max(math.ceil(R * p * c / cfg.lanes), groups * max(rd // M, wr // M))


def _tiled_roofline(cfg: HwConfig, layer: GemmLayer, batch: int,
                    pol: tuple[int, int, int]) -> tuple[int, str]:
    """Roofline cycles of the traffic the policy's commands really move (sim.traffic), and
    which limit sets them. Commands as in :func:`plan_layer`: ``ceil(batch / B_R)`` of
    ``B_R`` samples (the last smaller), each ``groups`` GEMMs, R split at the descriptor's
    limit."""
    br, bp, k = pol
    g = layer.groups
    cg = layer.c // g
    n_full, rest = divmod(batch, br)
    beats = 0
    for nb, count in ((br, n_full), (rest, 1 if rest else 0)):
        if not count:
            continue
        for R, n in _descriptor_rows(cfg, nb * layer.r):
            t = tiled_traffic(cfg, R, layer.p, cg, bp=bp, k=k, bias=True, out_mode=OUT_REQUANT)
            beats += count * g * n * t.cycles
    compute = math.ceil(batch * layer.r * layer.p * layer.c / cfg.lanes)
    return max(compute, beats), ("memory" if beats > compute else "compute")


def plan_layer(cfg: HwConfig, layer: GemmLayer, batch: int, hardware: str = "fluid", *,
               mem: MemTiming = MemTiming(), fixed: tuple[int, int, int] | None = None,
               exit_classes: int = 0, final: bool = False) -> LayerPlan:
    """Best (or the ``fixed``) policy for ``layer`` at ``batch`` samples. ``exit_classes``:
    an exit test on that many logits follows (every sample leaves if ``final``, none
    otherwise: the table's exit-test cost is for samples that stay; each sample that leaves
    adds ``sim.fbe_model.exit_leave_extra`` cycles)."""
    if not isinstance(batch, int) or batch < 1:
        raise MapperError(f"batch = {batch!r}: must be a positive integer")
    g = layer.groups
    cg = layer.c // g
    check_descriptor_fields(cfg, layer)
    if fixed is not None:
        br, bp, k = fixed
        if (bp, k) not in cfg.policies:
            raise MapperError(f"policy (B_P, k) = ({bp}, {k}): legal pairs are {list(cfg.policies)}")
        if not 1 <= br:
            raise MapperError(f"policy B_R = {br}: must be at least 1")
        cands = [(min(br, batch), bp, k)]
    else:
        cands = [(br, bp, k) for br in _br_choices(batch) for bp, k in policies_for(cfg, hardware)]
    best = None
    for br, bp, k in cands:
        n_full, rest = divmod(batch, br)
        cyc, cmds = 0, 0
        for nb, count in ((br, n_full), (rest, 1 if rest else 0)):
            if count:
                c1, n1 = _command_cycles(cfg, nb * layer.r, layer.p, cg, bp, k, mem)
                cyc += count * g * c1
                cmds += count * g * n1
        # the FBE spends one cycle issuing each command
        if best is None or cyc + cmds < best[0] + best[1]:
            best = (cyc, cmds, (br, bp, k))
    cyc, cmds, pol = best
    R = batch * layer.r
    tiled, bound = _tiled_roofline(cfg, layer, batch, pol)
    macs = R * layer.p * cg * g
    roof = _roofline(cfg, R, layer.p, layer.c, g)
    fbe = ENTRY_PRE + batch + cmds + ENTRY_POST
    if exit_classes:
        fbe += EXIT_POST - ENTRY_POST + exit_test_cycles(cfg, exit_classes, batch, batch if final else 0, mem)
    return LayerPlan(name=layer.name, batch=batch, policy=pol, cycles=cyc, macs=macs, commands=cmds,
                     roofline_cycles=roof, utilisation=macs / ((cyc + fbe) * cfg.lanes),
                     roofline_efficiency=roof / (cyc + fbe), fbe_cycles=fbe,
                     roofline_cycles_tiled=tiled, bound_tiled=bound)


@dataclass
class ModelPlan:
    """Plans for every (batch 1..b_max, layer) of a model, and every head."""
    cfg: HwConfig
    model: EEModel
    hardware: str
    b_max: int
    layers: list[list[LayerPlan]]     #: [b-1][layer]
    heads: list[list[list[LayerPlan]]]  #: [b-1][exit][head layer]
    mem: MemTiming = field(default_factory=MemTiming)   #: the memory timing the plans were made for

    def exit_leave_cycles(self) -> list[int]:
        """Per head: the cycles each sample that leaves there adds to the head's exit test
        (its result written), on top of :meth:`head_cycles`."""
        return [exit_leave_extra(self.cfg, e.layers[-1].c, self.mem) for e in self.model.exits]

    def head_cycles(self, b: int, i: int) -> int:
        """Head ``i`` at batch ``b`` with its exit test (nobody leaving), FBE included."""
        return sum(p.total_cycles for p in self.heads[b - 1][i])

    def exit_path_cycles(self, b: int) -> list[int]:
        """Cycles for a batch of ``b`` that all leave at exit i (heads on the way included)."""
        out = []
        leave = self.exit_leave_cycles()
        for i in range(self.model.n_exits):
            last = self.model.exit_layer(i)
            cyc = sum(p.total_cycles for p in self.layers[b - 1][:last + 1])
            cyc += sum(self.head_cycles(b, j) for j in range(min(i + 1, len(self.model.exits))))
            if i < len(self.model.exits):
                cyc += b * leave[i]
            out.append(cyc)
        return out

    def latency_table(self) -> LatencyTable:
        """The serving simulator's table: every (batch, op), the cycles a leaving sample adds
        at each head, and the FBE's own cost of a preemption (REQ, ALLOC of one sample) and
        of a merge (MERGE of one sample) from :mod:`fluidnpu.sim.fbe_model`."""
        lc = np.zeros((self.b_max + 1, len(self.model.layers)), dtype=np.int64)
        hc = np.zeros((self.b_max + 1, len(self.model.exits)), dtype=np.int64)
        for b in range(1, self.b_max + 1):
            lc[b] = [p.total_cycles for p in self.layers[b - 1]]
            hc[b] = [self.head_cycles(b, i) for i in range(len(self.model.exits))]
        return LatencyTable.for_model(self.model, hardware=self.hardware, clock_mhz=self.cfg.clock_mhz,
                                      layer_cycles=lc, head_cycles=hc, peak_macs_per_cycle=self.cfg.lanes,
                                      exit_leave_cycles=tuple(self.exit_leave_cycles()),
                                      preempt_cycles=REQ_CYCLES + alloc_cycles(1), merge_cycles=merge_cycles(1),
                                      source=f"cycle model, mapper ({self.hardware}), {self.cfg.key()}")

    def table_rows(self):
        """(batch, layer index, name, B_R, B_P, k, cycles) for the backbone, then the heads."""
        for b in range(1, self.b_max + 1):
            for li, p in enumerate(self.layers[b - 1]):
                yield (b, li, p.name) + p.policy + (p.total_cycles,)
            n = len(self.model.layers)
            for i, head in enumerate(self.heads[b - 1]):
                for p in head:
                    n_ = n
                    n += 1
                    yield (b, n_, p.name) + p.policy + (p.total_cycles,)

    def fbe_image(self) -> bytes:
        """The FBE control table: one 16-bit little-endian word per (batch, layer id),
        row-major from batch 1; bits 7:0 B_R, 11:8 log2 B_P, 15:12 log2 k (docs/mapper.md)."""
        out = bytearray()
        for _, _, _, br, bp, k, _ in self.table_rows():
            if br > 255:
                raise MapperError(f"B_R = {br}: the FBE table holds at most 255")
            out += struct.pack("<H", br | (bp.bit_length() - 1) << 8 | (k.bit_length() - 1) << 12)
        return bytes(out)

    def write_tables(self, out_dir: str | Path) -> list[Path]:
        """fbe_table.bin, fbe_table.csv, latency_table.json and latency_table.csv, published
        together with a manifest (:func:`fluidnpu.outputs.staged_output`): never a mixed set."""
        from fluidnpu.outputs import staged_output
        files = {
            "fbe_table.bin": self.fbe_image(),
            "fbe_table.csv": ("batch,layer_id,name,B_R,B_P,k,cycles\n" + "".join(
                ",".join(map(str, r)) + "\n" for r in self.table_rows())).encode(),
        }
        tab = self.latency_table()
        names = [L.name for L in self.model.layers] + [f"head{i}" for i in range(len(self.model.exits))]
        rows = ["batch," + ",".join(names)]
        for b in range(1, self.b_max + 1):
            rows.append(f"{b}," + ",".join(str(int(v)) for v in list(tab.layer_cycles[b]) + list(tab.head_cycles[b])))
        files["latency_table.csv"] = ("\n".join(rows) + "\n").encode()
        with staged_output(out_dir, "perf-tables") as st:
            for name, data in files.items():
                (st.path / name).write_bytes(data)
            tab.save(st.path / "latency_table.json")
        return [st.final(n) for n in [*files, "latency_table.json"]]


def map_model(cfg: HwConfig, model: EEModel, hardware: str = "fluid", *, b_max: int = 16,
              mem: MemTiming = MemTiming(), batches=None,
              fixed: tuple[int, int, int] | None = None) -> ModelPlan:
    """Plan every backbone layer and head layer for batch sizes 1..``b_max``."""
    if not isinstance(b_max, int) or not 1 <= b_max <= 255:
        raise MapperError(f"b_max = {b_max!r}: must be an integer from 1 to 255")
    policies_for(cfg, hardware)
    bs = range(1, b_max + 1)
    last = len(model.layers) - 1
    layers = [[plan_layer(cfg, L, b, hardware, mem=mem, fixed=fixed,
                          exit_classes=L.c if i == last else 0, final=i == last)
               for i, L in enumerate(model.layers)] for b in bs]
    heads = [[[plan_layer(cfg, L, b, hardware, mem=mem, fixed=fixed,
                          exit_classes=L.c if j == len(e.layers) - 1 else 0)
               for j, L in enumerate(e.layers)] for e in model.exits]
             for b in bs]
    return ModelPlan(cfg=cfg, model=model, hardware=hardware, b_max=b_max, layers=layers, heads=heads, mem=mem)


def ablation(cfg: HwConfig, model: EEModel, batches, *, mem: MemTiming = MemTiming()) -> dict:
    """Backbone MAC utilisation at each batch for rbatch, stack and fluid hardware."""
    res = {}
    for hw in HARDWARE:
        res[hw] = []
        for b in batches:
            plans = [plan_layer(cfg, L, b, hw, mem=mem) for L in model.layers]
            macs = sum(p.macs for p in plans)
            res[hw].append(macs / (sum(p.total_cycles for p in plans) * cfg.lanes))
    return res
