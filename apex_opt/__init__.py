"""apex-opt: plan LLM serving deployments (CP-SAT plan search + iteration-level serving simulator).

Public API (pure functions returning pydantic models that also define the CLI's ``--json``):
``check``, ``estimate``, ``simulate``, ``solve``, plus the loaders ``load_model`` and
``load_cluster``.
"""

__version__ = "0.1.0"
