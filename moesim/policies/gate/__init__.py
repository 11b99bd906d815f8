"""Training-time token -> expert routing rules and their dynamics (POLICIES.md C1-C7).

Kinds (``training.gate.kind``): ``none``, ``aux_loss``, ``loss_free_bias``, ``bip``, ``sinkhorn``,
``expert_choice``; token dropping by capacity (``capacity_clip``) applies to the token-choice
kinds. ``RouterAffinity`` models the router's natural preference over steps (drift, three phases).
"""

from moesim.policies.gate.base import (
    GATES, GateOverhead, GatePolicy, GateRouting, GateState, capacity_clip, max_violation, softmax_rows)
from moesim.policies.gate import rules  # noqa: F401  (registration)
from moesim.policies.gate.affinity import RouterAffinity, congestion_equilibrium, phase_gamma

__all__ = ["GATES", "GateOverhead", "GatePolicy", "GateRouting", "GateState", "RouterAffinity", "capacity_clip",
           "congestion_equilibrium", "max_violation", "phase_gamma", "softmax_rows"]
