"""apex-opt: plan LLM serving deployments (CP-SAT plan search + iteration-level serving simulator).

Public API (pure functions returning pydantic models that also define the CLI's ``--json``):
``check``, ``estimate``, ``simulate``, ``solve``, plus the loaders ``load_model`` and
``load_cluster``.
"""

__version__ = "0.1.0"

from .check import CheckOptions, CheckResult, check  # noqa: E402
from .estimate import EstimateResult, estimate, parse_batch  # noqa: E402
from .registry import load_cluster  # noqa: E402
from .search import solve  # noqa: E402
from .sim.simulator import SimulationResult, simulate  # noqa: E402
from .specs.model import load_model  # noqa: E402
from .specs.plan import Plan, ReplicaConfig, ReplicaGroup  # noqa: E402

__all__ = ["check", "CheckOptions", "CheckResult", "estimate", "EstimateResult", "parse_batch",
           "simulate", "SimulationResult", "solve", "load_model", "load_cluster", "Plan",
           "ReplicaConfig", "ReplicaGroup"]
