"""Routing loads that change over passes or across layers: one import for the non-stationary kinds.

Re-exports, by concept:

- ``routing_model``: ``RoutingModel``, the contract every routing-load model follows;
- ``dynamic_routing``: ``DynamicRouting`` (kinds ``drift``, ``correlated``, ``fitted``) and ``base_popularity``;
- ``layer_transitions``: the cross-layer ``Q`` builders ``comonotone_coupling``, ``coupled_transitions``
  and ``load_transitions``;
- ``trace_replay``: ``TraceReplay`` (kind ``trace``) and ``TraceExhausted``;
- ``routing_fit``: ``fit`` and ``FittedRouting``;
- ``source_split``: ``split_by_source`` and ``split_tokens_by_source``;
- ``routing_load``: ``capped_inclusion_rows``.
"""

from __future__ import annotations

from moesim.workload.dynamic_routing import DynamicRouting, base_popularity
from moesim.workload.layer_transitions import comonotone_coupling, coupled_transitions, load_transitions
from moesim.workload.routing_fit import FittedRouting, fit
from moesim.workload.routing_load import capped_inclusion_rows
from moesim.workload.routing_model import RoutingModel
from moesim.workload.source_split import split_by_source, split_tokens_by_source
from moesim.workload.trace_replay import TraceExhausted, TraceReplay

__all__ = [
    "DynamicRouting", "FittedRouting", "RoutingModel", "TraceExhausted", "TraceReplay", "base_popularity",
    "capped_inclusion_rows", "comonotone_coupling", "coupled_transitions", "fit", "load_transitions",
    "split_by_source", "split_tokens_by_source",
]
