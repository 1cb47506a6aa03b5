"""The in-memory description of an early-exit network, shared by the cycle model,
the mapper, the serving simulator and the hardware network runner."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GemmLayer", "ExitHead", "EEModel"]


@dataclass(frozen=True)
class GemmLayer:
    """One layer lowered to a GEMM, per sample: O[r x c] = X[r x p] . W[p x c].

    For a batch of B samples the hardware sees R = B * r.
    """
    name: str
    r: int          #: rows per sample (output pixels of a convolution, 1 for a dense layer)
    p: int          #: reduction length (Fh * Fw * Cin for a convolution)
    c: int          #: output channels
    kind: str = "gemm"   #: "conv" or "gemm" (where it came from)

    def __post_init__(self):
        for f in ("r", "p", "c"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"layer {self.name!r}: {f} = {v!r}: must be a positive integer")

    @property
    def macs(self) -> int:
        return self.r * self.p * self.c


@dataclass(frozen=True)
class ExitHead:
    """A classifier head that runs after backbone layer ``after`` (0-based index)."""
    after: int
    layers: tuple[GemmLayer, ...]


@dataclass(frozen=True)
class EEModel:
    """A backbone, its early-exit heads and the exit probabilities.

    ``exit_probs[i]`` is the unconditional share of samples that leave at exit ``i``
    (heads in order of ``after``; the last entry is the final classifier, which ends
    the backbone). They sum to 1. The final exit is the backbone's last layer itself
    and has no separate head.
    """
    name: str
    layers: tuple[GemmLayer, ...]
    exits: tuple[ExitHead, ...]
    exit_probs: tuple[float, ...]
    source: str = ""          #: where the exit rates come from
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.layers:
            raise ValueError(f"model {self.name!r}: has no layers")
        afters = [e.after for e in self.exits]
        if afters != sorted(set(afters)):
            raise ValueError(f"model {self.name!r}: exits must be after distinct layers in order, got {afters}")
        for a in afters:
            if not 0 <= a < len(self.layers) - 1:
                raise ValueError(f"model {self.name!r}: exit after layer {a}: must be from 0 to {len(self.layers) - 2}")
        if len(self.exit_probs) != len(self.exits) + 1:
            raise ValueError(f"model {self.name!r}: exit_probs has {len(self.exit_probs)} entries; "
                             f"needs one per exit plus the final one ({len(self.exits) + 1})")
        if any(q < 0 for q in self.exit_probs) or abs(sum(self.exit_probs) - 1.0) > 1e-6:
            raise ValueError(f"model {self.name!r}: exit_probs {self.exit_probs} must be non-negative and sum to 1")

    @property
    def n_exits(self) -> int:
        """Exits including the final one."""
        return len(self.exits) + 1

    def conditional_exit_prob(self, i: int) -> float:
        """Probability that a sample which reached exit ``i`` leaves there."""
        rest = sum(self.exit_probs[i:])
        return 1.0 if rest <= 0 else self.exit_probs[i] / rest

    def exit_layer(self, i: int) -> int:
        """Backbone layer index after which exit ``i`` is taken."""
        return self.exits[i].after if i < len(self.exits) else len(self.layers) - 1
