"""CP-SAT plan search.

* :mod:`.candidates` -- replica candidates (shape x dtypes x engine limits) with their memory verdict
  and analytic costs;
* :mod:`.stages` -- uneven layer-to-stage splits (exact DP);
* :mod:`.objective` -- steady-state surrogates of a replica / a plan, and their integer scaling;
* :mod:`.model` -- the CP-SAT model (Boolean per candidate x replica count, linear constraints);
* :mod:`.topk` -- top-K distinct plans by no-good cuts;
* :mod:`.explain` -- infeasibility explanation with assumption literals and verified fixes;
* :mod:`.validate` -- a solver-independent plan validator.
"""
