"""Test harness: Redis servers, RQ environments, worker and producer processes.

Modules here are imported both by pytest in the main virtual environment and by RQ workers in
the `.venvs/rq-*` environments, so this package must import nothing at import time.
"""
