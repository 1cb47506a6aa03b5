"""The result of one synthesis run and how the numbers are taken from the tools' reports."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["SynthResult", "resources_from", "format_table"]


@dataclass
class SynthResult:
    """Resources and Fmax of one configuration on one target (see docs/synthesis.md)."""

    target: str
    device: str
    luts: int | None                #: LUT4s (ECP5: TRELLIS_COMB; iCE40: SB_LUT4; generic: $lut)
    ffs: int | None                 #: flip-flops
    dsps: int | None                #: MULT18X18D (ECP5) / SB_MAC16 (iCE40); 0 for generic
    brams: int | None               #: DP16KD (ECP5) / SB_RAM40_4K (iCE40); generic: memories
    fmax_mhz: float | None          #: nextpnr's Fmax of the core clock; None for generic
    fits: bool | None               #: the design fits the device (placed; see ``routed``)
    reason: str = ""                #: why it does not fit
    target_mhz: float | None = None  #: the clock constraint nextpnr worked for
    timing_met: bool | None = None  #: fmax_mhz >= target_mhz
    util: dict = field(default_factory=dict)       #: share of the device per resource, 0..1+
    available: dict = field(default_factory=dict)  #: device capacity per resource
    resources: dict = field(default_factory=dict)  #: nextpnr's table {bel: {used, available}}
    cells: dict = field(default_factory=dict)      #: yosys cell counts by type
    critical_path: dict | None = None              #: summary of nextpnr's critical path
    floorplan: dict | None = None   #: ECP5: block-RAM row -> memories pinned there (synth.floorplan)
    #: ECP5 boards: the flip-flops' control sets and the logic tiles they need at least
    #: (synth.ctrlsets: ffs, lsr_nets, ce_nets, private_lsr_ffs, min_tiles, tiles)
    ff_control_sets: dict | None = None
    #: router2's overuse by design unit and signal family (``congestion=True``; synth.congestion)
    congestion: dict | None = None
    config: dict = field(default_factory=dict)
    cfg_key: str = ""
    tool_versions: dict = field(default_factory=dict)
    seed: int | None = None         #: nextpnr seed of the result (the best of a seed sweep)
    placer: str | None = None       #: board targets: nextpnr's placer (``auto`` resolved)
    router: str | None = None       #: board targets: nextpnr's router (``auto`` resolved)
    #: seed sweep: Fmax per seed ("seed": MHz, or None: the run failed or did not route)
    seed_fmax: dict = field(default_factory=dict)
    routed: bool | None = None      #: board targets: routing finished (False: stopped by the timeout)
    fmax_placed_mhz: float | None = None  #: not routed: nextpnr's estimate after placement
    elapsed_s: float = 0.0          #: wall-clock seconds of the run (of the original run when cached)
    stage_s: dict = field(default_factory=dict)    #: seconds per tool
    out_dir: str = ""               #: where the logs and reports of the run are
    files: dict = field(default_factory=dict)      #: log and report paths (in out_dir)
    cache_key: str = ""
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(p)
        return p

    @classmethod
    def from_dict(cls, d: dict) -> "SynthResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def read(cls, path: str | Path) -> "SynthResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """A few human-readable lines."""
        def share(k):
            v = self.util.get(k)
            return f" ({100 * v:.0f}%)" if v is not None else ""
        lines = [f"{self.target} ({self.device}): "
                 + ("fits" if self.fits else "does NOT fit" if self.fits is False else "no device flow")]
        lines.append(f"  LUTs {self.luts}{share('luts')}, FFs {self.ffs}{share('ffs')}, "
                     f"DSPs {self.dsps}{share('dsps')}, BRAMs {self.brams}{share('brams')}")
        if self.fmax_mhz is not None:
            lines.append(f"  Fmax {self.fmax_mhz:.1f} MHz (target {self.target_mhz:g} MHz: "
                         f"{'met' if self.timing_met else 'MISSED'})")
        elif self.fmax_placed_mhz is not None:
            lines.append(f"  not routed; {self.fmax_placed_mhz:.1f} MHz estimated after placement")
        if len(self.seed_fmax) > 1:
            per = ", ".join(f"{k}: {v:.1f}" if v is not None else f"{k}: not routed"
                            for k, v in self.seed_fmax.items())
            lines.append(f"  seed sweep (MHz) {per}; kept seed {self.seed}")
        elif self.fmax_mhz is not None and not self.timing_met:
            lines.append(f"  one placement seed ({self.seed}); nextpnr's Fmax moves by about 15 % between seeds on "
                         f"one netlist: --seeds 1-4 tries four and keeps the best (docs/synthesis.md)")
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        if self.critical_path and self.critical_path.get("sources"):
            cp = self.critical_path
            lines.append(f"  critical path {cp['delay_ns']:.2f} ns ({cp['logic_levels']} logic levels, "
                         f"{cp['routing_ns']:.2f} ns routing): {', '.join(cp['sources'][:6])}")
        if self.congestion:
            from .congestion import format_congestion
            lines.extend(format_congestion(self.congestion, n=5))
        lines.append(f"  {self.elapsed_s:.0f} s{' (cached)' if self.cached else ''}; logs in {self.out_dir}")
        return "\n".join(lines)


def _sum_prefix(cells: dict, *prefixes: str) -> int:
    return sum(n for t, n in cells.items() if t.startswith(prefixes))


def resources_from(family: str, cells: dict, util: dict, capacity: dict) -> tuple[dict, dict]:
    """``(counts, available)`` for luts/ffs/dsps/brams of a family.

    Board families prefer nextpnr's table ``util`` (what is on the device); yosys cell
    counts ``cells`` fill in what nextpnr did not report.
    """
    def used(bel, fallback):
        if bel in util:
            return util[bel]["used"]
        return fallback

    def avail(bel):
        if bel in util:
            return util[bel]["available"]
        return capacity.get(bel)

    if family == "ecp5":
        counts = {
            "luts": used("TRELLIS_COMB", cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
                         + 4 * cells.get("TRELLIS_DPR16X4", 0)),
            "ffs": used("TRELLIS_FF", cells.get("TRELLIS_FF", 0)),
            "dsps": used("MULT18X18D", cells.get("MULT18X18D", 0)),
            "brams": used("DP16KD", cells.get("DP16KD", 0)),
        }
        available = {"luts": avail("TRELLIS_COMB"), "ffs": avail("TRELLIS_FF"),
                     "dsps": avail("MULT18X18D"), "brams": avail("DP16KD")}
    elif family == "ice40":
        counts = {
            "luts": cells.get("SB_LUT4", 0),
            "ffs": _sum_prefix(cells, "SB_DFF"),
            "dsps": used("ICESTORM_DSP", cells.get("SB_MAC16", 0)),
            "brams": used("ICESTORM_RAM", cells.get("SB_RAM40_4K", 0)),
        }
        lc = avail("ICESTORM_LC")
        available = {"luts": lc, "ffs": lc, "dsps": avail("ICESTORM_DSP"),
                     "brams": avail("ICESTORM_RAM")}
        if "ICESTORM_LC" in util:
            counts["lcs"] = util["ICESTORM_LC"]["used"]
            available["lcs"] = lc
    else:   # generic: yosys LUT4 mapping, memories kept whole
        counts = {
            "luts": cells.get("$lut", 0),
            "ffs": _sum_prefix(cells, "$_DFF", "$_SDFF", "$_DFFE", "$_SDFFE", "$_SDFFCE",
                               "$_ALDFF", "$_DLATCH", "$_SR", "$dff", "$adff", "$sdff"),
            "dsps": 0,
            "brams": _sum_prefix(cells, "$mem"),
        }
        available = {}
    return counts, available


def format_table(results: list[SynthResult], *, with_config: tuple[str, ...] = ("tc", "tp", "tr", "x_buf_elems", "w_buf_elems")) -> str:
    """A markdown table of results (one row each)."""
    def pct(r, k):
        v = r.util.get(k)
        return f" ({100 * v:.0f}%)" if v is not None else ""

    head = [*with_config, "target", "LUTs", "FFs", "DSPs", "BRAMs", "Fmax MHz", "fits", "time s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        fm = (f"{r.fmax_mhz:.1f}" if r.fmax_mhz is not None else
              f"{r.fmax_placed_mhz:.1f} after placement, not routed"
              if r.fmax_placed_mhz is not None else "-")
        fits = {True: "yes", False: "no", None: "-"}[r.fits]
        cells = [str(r.config.get(k, "")) for k in with_config] + [
            r.target, f"{r.luts}{pct(r, 'luts')}", f"{r.ffs}{pct(r, 'ffs')}",
            f"{r.dsps}{pct(r, 'dsps')}", f"{r.brams}{pct(r, 'brams')}", fm, fits,
            f"{r.elapsed_s:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
