"""The in-memory description of an early-exit network, shared by the cycle model,
the mapper, the serving simulator and the hardware network runner."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GemmLayer", "ExitHead", "EEModel", "EXIT_CRITERIA"]


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
    # Optional fields below are used by the hardware network runner only; the
    # serving simulator and the cycle model ignore them.
    relu: bool = False          #: apply ReLU to the layer's output
    mult: int | None = None     #: requantisation multiplier (None: raw 32-bit output)
    shift: int | None = None    #: requantisation right shift (needs ``mult``)
    groups: int = 1             #: grouped convolution (depthwise: groups = channels); see docs/models.md

    def __post_init__(self):
        for f in ("r", "p", "c", "groups"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"layer {self.name!r}: {f} = {v!r}: must be a positive integer")
        if not isinstance(self.relu, bool):
            raise ValueError(f"layer {self.name!r}: relu = {self.relu!r}: must be true or false")
        if self.mult is not None and (not isinstance(self.mult, int) or isinstance(self.mult, bool)):
            raise ValueError(f"layer {self.name!r}: mult = {self.mult!r}: must be an integer")
        if self.shift is not None:
            if not isinstance(self.shift, int) or isinstance(self.shift, bool) or self.shift < 0:
                raise ValueError(f"layer {self.name!r}: shift = {self.shift!r}: must be a non-negative integer")
            if self.mult is None:
                raise ValueError(f"layer {self.name!r}: shift = {self.shift!r} given without mult")
        if self.c % self.groups:
            raise ValueError(f"layer {self.name!r}: groups = {self.groups}: must divide c = {self.c}")

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample (exact also for grouped layers: p is per group)."""
        return self.r * self.p * self.c


EXIT_CRITERIA = ("margin", "max")


@dataclass(frozen=True)
class ExitHead:
    """A classifier head that runs after backbone layer ``after`` (0-based index).

    ``threshold`` and ``criterion`` are the exit test of a network with real weights
    (the serving simulator ignores them): a sample leaves when its integer logits pass
    ``top1 - top2 >= threshold`` ("margin") or ``top1 >= threshold`` ("max").
    """
    after: int
    layers: tuple[GemmLayer, ...]
    threshold: int | None = None    #: exit test threshold, in the head's integer logit units
    criterion: str | None = None    #: "margin" or "max" (set when threshold is)

    def __post_init__(self):
        t = self.threshold
        if t is not None and (not isinstance(t, int) or isinstance(t, bool)):
            raise ValueError(f"exit after layer {self.after}: threshold = {t!r}: must be an integer")
        if self.criterion is not None and self.criterion not in EXIT_CRITERIA:
            raise ValueError(f"exit after layer {self.after}: criterion = {self.criterion!r}: "
                             f"must be one of {', '.join(EXIT_CRITERIA)}")

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample of the head's own layers."""
        return sum(l.macs for l in self.layers)


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

    @property
    def backbone_macs(self) -> int:
        """Multiply-accumulates per sample of the whole backbone (incl. the final classifier)."""
        return sum(l.macs for l in self.layers)

    def macs_to_exit(self, i: int) -> int:
        """MACs a sample spends if it leaves at exit ``i``: the backbone up to the exit
        plus every head it passes through (heads before ``i`` and head ``i`` itself)."""
        last = self.exit_layer(i)
        heads = sum(e.macs for e in self.exits[:min(i + 1, len(self.exits))])
        return sum(l.macs for l in self.layers[:last + 1]) + heads

    def expected_macs(self) -> float:
        """Mean MACs per sample under ``exit_probs``."""
        return sum(q * self.macs_to_exit(i) for i, q in enumerate(self.exit_probs))

    def layer_index(self, name: str) -> int:
        """0-based index of the backbone layer called ``name`` (KeyError if none)."""
        for i, l in enumerate(self.layers):
            if l.name == name:
                return i
        raise KeyError(name)

    def exit_layer(self, i: int) -> int:
        """Backbone layer index after which exit ``i`` is taken."""
        return self.exits[i].after if i < len(self.exits) else len(self.layers) - 1
