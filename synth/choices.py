"""The flow's option values, in a module that imports neither tools nor the hardware, so
the command line offers the same tuples the flow and the sweep file check."""
from __future__ import annotations

__all__ = ["PLACERS", "ROUTERS", "FLOORPLANS"]

#: nextpnr placers the flow offers (``--placer``); ``auto`` is the static placer on ECP5
#: (measured on 667ba59, 4 Dec 2026, seed 1: the 4 x 4 at 105.45 MHz against HeAP's
#: 97.90, the 8 x 4 at 108.64 against 87.37; the 8 x 8 routes only with it) and HeAP
#: elsewhere (:func:`.pnr.resolve_placer`)
PLACERS = ("auto", "heap", "static")
#: nextpnr routers the flow offers (``--router``); ``auto`` is router2 with timing-driven
#: rip-up on ECP5 (:data:`~.targets.ECP5_ROUTER_ARGS`: hours faster than router1 on the
#: default core) and nextpnr's own default (router1) elsewhere. router1 routes where
#: router2's overuse levels off: the 16 x 8 (6 Dec 2026, evening, docs/synthesis.md), whose
#: overuse router2 took down to about 9,500 wires and no further, routed with router1 at
#: 104.26 MHz in 15 minutes of routing (dd2f238, 6 Dec 2026, night; :func:`.pnr.resolve_router`)
ROUTERS = ("auto", "router1", "router2")
#: ``auto``: each operand memory's block RAMs in one row and the DSPs planned (ECP5,
#: :mod:`.floorplan`); ``none``: nextpnr places them
FLOORPLANS = ("auto", "none")
