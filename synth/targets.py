"""Synthesis targets: the boards (amaranth-boards platforms) and the generic gate count.

A board target builds :class:`~fluidnpu.synth.top.BoardTop` on its platform with the
board clock's constraint replaced by the timing target, so nextpnr places and routes
for that frequency and reports the Fmax it reached. (On the real board the clock pin
still carries the board oscillator; a PLL would give the target frequency.)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["Target", "TARGETS", "get_target", "ecp5_rest", "ecp5_two_part"]


#: ECP5: ``synth_ecp5`` runs in two parts, and between them ``dffunmap -srst-only`` turns
#: every synchronous reset into logic in front of the flip-flop's D input. nextpnr-ecp5
#: puts the eight flip-flops of a logic tile on one LSR net (ecp5/arch_place.cc,
#: ``slices_compatible``), and yosys had made a private LSR net for thousands of single
#: bits (a reset condition it found per bit): on the 16 x 8 (d64e533) 2,938 LSR nets fed
#: at most two flip-flops each, each net holding a tile of eight, and the flip-flops' control
#: sets alone needed at least 9,943 of the 10,455 tiles; neither placer legalised it. With
#: the resets as logic: 7,251 tiles, for 1,317 more LUT4 (docs/synthesis.md).
ECP5_SYNTH_FIRST = "-run begin:map_ffs"
ECP5_SYNTH_REST = "-run map_ffs:"
ECP5_BETWEEN = "dffunmap -srst-only"


def ecp5_rest(synth_cmd: str) -> str:
    """What follows ``synth_cmd`` run with :data:`ECP5_SYNTH_FIRST`: the sync resets to logic
    (:data:`ECP5_BETWEEN`), then the rest of ``synth_ecp5``."""
    return f"{ECP5_BETWEEN}\n{synth_cmd} {ECP5_SYNTH_REST}"


def ecp5_two_part(synth_cmd: str) -> str:
    """A ``synth_ecp5 ...`` command as the flow runs it: up to ``map_ffs``, the sync resets
    to logic, then the rest (:func:`ecp5_rest`)."""
    return f"{synth_cmd} {ECP5_SYNTH_FIRST}\n{ecp5_rest(synth_cmd)}"


@dataclass(frozen=True)
class Target:
    name: str
    family: str                          #: "ecp5", "ice40" or "generic"
    device: str                          #: device name as the vendor writes it
    platform: str | None = None          #: "module:Class" of the amaranth-boards platform
    nextpnr: str | None = None           #: tool key of the place-and-route tool
    nextpnr_args: tuple[str, ...] = ()   #: device and package options
    pack: str | None = None              #: tool key of the bitstream packer
    #: what a design may use, for shares when nextpnr gives no table (bel -> count)
    capacity: dict = field(default_factory=dict)
    synth_opts: str = ""                 #: extra options of yosys' synth_<family>
    #: board targets on an ECP5 with a site table: the key of its block-RAM sites (synth.floorplan)
    ebr_device: str | None = None
    button: str = "button"
    leds: int = 8

    @property
    def is_board(self) -> bool:
        return self.platform is not None

    def tools(self) -> list[str]:
        return ["yosys"] + [t for t in (self.nextpnr, self.pack) if t]

    def platform_class(self, clock_mhz: float | None = None):
        """The amaranth-boards platform class, its default clock constrained to ``clock_mhz``."""
        mod_name, _, cls_name = self.platform.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            from .tools import ToolMissing
            raise ToolMissing(f"target {self.name}: cannot import {mod_name}: install fluidnpu[synth] "
                              f"(pip install 'fluidnpu[synth]')") from None
        cls = getattr(mod, cls_name)
        if clock_mhz is None:
            return cls
        from amaranth.build import Clock, Resource
        res = []
        for r in cls.resources:
            if r.name == cls.default_clk and r.number == 0:
                r = Resource(r.name, r.number, *r.ios, Clock(float(clock_mhz) * 1e6), r.attrs)
            res.append(r)
        return type(f"{cls_name}_at_{clock_mhz:g}MHz", (cls,), {"resources": res})


#: nextpnr-ecp5's router and its options, for ``fluidnpu synth`` (its ``router = "auto"``,
#: :data:`~.choices.ROUTERS`) and the board build:
#: router1 needs hours for the default core; router2's timing-driven rip-up re-routes the
#: nets of failing paths (on one placement of the default 8 x 8 with seed 1, 8c73028
#: with the memories' write decode of 5 Dec 2026, 96.35 MHz without and 103.08 with it)
ECP5_ROUTER_ARGS = ("--router", "router2", "--tmg-ripup")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("ulx3s-85f", "ecp5", "LFE5U-85F-6BG381C",
           platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
           nextpnr="nextpnr-ecp5", nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6"),
           pack="ecppack", ebr_device="85k",
           capacity={"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156,
                     "DP16KD": 208}),
    Target("icebreaker", "ice40", "iCE40UP5K-SG48",
           platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
           nextpnr="nextpnr-ice40", nextpnr_args=("--up5k", "--package", "sg48"),
           pack="icepack", synth_opts="-dsp",
           capacity={"ICESTORM_LC": 5280, "ICESTORM_DSP": 8, "ICESTORM_RAM": 30}, leds=2),
    Target("generic", "generic", "none (yosys generic LUT4 cells)"),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"synthesis target {name!r}: unknown; choose from "
                         f"{', '.join(TARGETS)}") from None
