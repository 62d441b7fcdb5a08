"""Typed input specifications: model, cluster, workload, SLO, plan."""
