"""Serving simulator: requests (traces, synthetic workloads), one-replica engine, DP router and
aggregated serving metrics."""
