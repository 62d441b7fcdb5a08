"""Plan search: candidates -> CP-SAT shortlist -> simulate -> rank (see :mod:`.pipeline`).

* :mod:`.pipeline` -- :func:`solve`, the library entry point of ``apex-opt solve``;
* :mod:`.shortlist` -- which plans get simulated;
* :mod:`.executor` -- where they are simulated (serial, process pool, Ray);
* :mod:`.rates` -- the rate search of the throughput objective;
* :mod:`.objectives` -- what each objective measures and how plans rank;
* :mod:`.baselines` -- the heuristic plans every answer is compared with;
* :mod:`.plans` -- plan keys, labels, the exhaustive plan list;
* :mod:`.results` -- the ``--json`` result models.
"""

from .objectives import OBJECTIVES
from .pipeline import (DEFAULT_ENGINE, DEFAULT_TIME_LIMIT_S, DEFAULT_TOP_K, Launcher, solve,
                       workload_rate_check)
from .plans import count_feasible, feasible_plans, plan_label
from .results import SCHEMA_VERSION, SolveResult

__all__ = ["OBJECTIVES", "DEFAULT_ENGINE", "DEFAULT_TIME_LIMIT_S", "DEFAULT_TOP_K", "Launcher",
           "solve", "workload_rate_check", "count_feasible", "feasible_plans", "plan_label",
           "SCHEMA_VERSION", "SolveResult"]
