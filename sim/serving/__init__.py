"""Serving co-simulator: devices stream requests to one NPU running early-exit CNNs.

Entry point: :func:`run`. See docs/serving.md.
"""
from .arrivals import MMPP2, ArrivalError, ArrivalProcess, GammaRenewal, Poisson, TraceError, TraceReplay, read_trace
from .plan import Batch, ModelPlan
from .result import Result, latency_stats
from .run import as_scenario, resolve_tables, run, slo_bases
from .scenario import (Device, Requests, Scenario, ScenarioError, draw_requests, for_requests, generate_requests,
                       load_scenario, scale_rates, scenario_from_dict)
from .simulator import SimulationError, Simulator

__all__ = ["run", "Result", "Scenario", "Device", "Requests", "generate_requests", "for_requests", "draw_requests",
           "scale_rates", "load_scenario", "scenario_from_dict", "as_scenario", "resolve_tables", "slo_bases", "ScenarioError",
           "ArrivalProcess", "Poisson", "GammaRenewal", "MMPP2", "TraceReplay", "read_trace", "TraceError",
           "ArrivalError", "Simulator", "SimulationError", "ModelPlan", "Batch", "latency_stats"]
