"""Early-exit workloads: model descriptions, topology files, the model zoo.

Formats and the zoo are documented in docs/models.md.
"""
from .model import GemmLayer, ExitHead, EEModel
from .errors import WorkloadError
from .topology import (ConvSpec, GemmSpec, conv_output_size, parse_topology, parse_topology_text,
                       read_topology, format_topology, write_topology)
from .exitrates import geometric, from_conditional, to_conditional, from_counts, read_counts
from .loader import load_model, model_from_dict, model_to_toml, save_model
from .weights import Network, layer_key, load_weights, load_network
from . import zoo
from .zoo import resolve_model

__all__ = ["GemmLayer", "ExitHead", "EEModel", "WorkloadError",
           "ConvSpec", "GemmSpec", "conv_output_size", "parse_topology", "parse_topology_text",
           "read_topology", "format_topology", "write_topology",
           "geometric", "from_conditional", "to_conditional", "from_counts", "read_counts",
           "load_model", "model_from_dict", "model_to_toml", "save_model", "zoo", "resolve_model",
           "Network", "layer_key", "load_weights", "load_network"]
