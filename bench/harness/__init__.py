"""Shared pieces of the benchmarks: private redis-server processes, child processes, RQ job data, reports."""
