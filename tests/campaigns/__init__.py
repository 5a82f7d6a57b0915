"""Campaigns that prove the promise of DESIGN §11 with figures (issue 10).

``python -m tests.campaigns NAME [--count N]`` runs one with real processes and
prints its figures as a table and one JSON line; ``tests/test_campaigns.py``
runs a short version of each in CI. docs/reliability.md has the long runs.
"""
