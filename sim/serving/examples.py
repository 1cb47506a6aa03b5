"""A small example early-exit CNN and a default scenario, for docs, benchmarks and quick studies.

Stand-ins until the model zoo (``fluidnpu.sim.workloads.zoo``) is available; the
exit rates are illustrative, not measured.
"""
from __future__ import annotations

from ..workloads.model import EEModel, ExitHead, GemmLayer
from .arrivals import MMPP2, Poisson
from .scenario import Device, Scenario

__all__ = ["toy_model", "default_scenario"]


def _conv(name, hw, cin, cout, k=3):
    return GemmLayer(name, r=hw * hw, p=k * k * cin, c=cout, kind="conv")


def toy_model(exit_probs=(0.35, 0.25, 0.15, 0.25)) -> EEModel:
    """A CIFAR-sized 11-layer CNN with three early exits (after layers 3, 5 and 7)."""
    layers = (_conv("conv1", 32, 3, 32), _conv("conv2", 32, 32, 32), _conv("conv3", 16, 32, 64),
              _conv("conv4", 16, 64, 64), _conv("conv5", 8, 64, 128), _conv("conv6", 8, 128, 128),
              _conv("conv7", 4, 128, 256), _conv("conv8", 4, 256, 256), _conv("conv9", 2, 256, 512),
              _conv("conv10", 2, 512, 512), GemmLayer("fc", r=1, p=512, c=10))
    exits = (ExitHead(3, (_conv("e0conv", 8, 64, 32), GemmLayer("e0fc", 1, 32, 10))),
             ExitHead(5, (_conv("e1conv", 4, 128, 64), GemmLayer("e1fc", 1, 64, 10))),
             ExitHead(7, (GemmLayer("e2fc", 1, 256, 10),)))
    return EEModel("toy-ee-cnn", layers, exits, tuple(exit_probs), source="illustrative exit rates")


def default_scenario(rate_per_device: float = 150.0, n_devices: int = 8, duration_s: float = 10.0,
                     slo_mult: float = 10.0, spiky: bool = True, model: EEModel | None = None) -> Scenario:
    """``n_devices`` cameras on one model: half Poisson, half spiking (2-state MMPP, same mean rate)."""
    model = model or toy_model()
    devs = []
    for i in range(n_devices):
        if spiky and i % 2:
            arr = MMPP2(rates=(0.5 * rate_per_device, 3.0 * rate_per_device), dwell_s=(0.8, 0.16))
        else:
            arr = Poisson(rate_per_device)
        devs.append(Device(f"cam{i}", model, arr, slo_mult=slo_mult))
    return Scenario(devices=tuple(devs), duration_s=duration_s, warmup_s=min(1.0, duration_s / 10),
                    name="default")
