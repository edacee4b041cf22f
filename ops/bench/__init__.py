"""Benchmarks of a running contactsync, each a module run as ``python -m ops.bench.NAME``.

They start the real processes (``contactsync worker``, ``beat``, ``sandbox``) on the real
services, measure from the outside (the sandbox's call log, the ledger), and print a table;
the figures and how they were obtained are in docs/benchmarks.md. ``ops/`` stands alone: it
imports product code (``worker``, ``webhooks``), never ``tests``.
"""
