"""Fault scenarios against a running contactsync, each a scripted, repeatable and
time-bounded run on loopback only::

    python -m ops.chaos [--scenario NAME|all] [--events N] [--seconds S] [--json FILE]

Each scenario starts the real processes (``contactsync web``, ``worker``, ``beat``, or
``contactsync up``) on services it starts itself (a dedicated ``redis-server``,
PostgreSQL cluster or RabbitMQ node on free ports, never the machine's shared ones), sends
signed events to the receiver while injecting its fault, and ends with the same check:
every event answered 2xx was applied (its contact in the sandbox with the right fields and
tags) or is a dead letter with its reason, and no contact was created twice. The figures
and what each scenario showed are in docs/reliability.md.

Modules: :mod:`.services` (dedicated Redis, PostgreSQL, RabbitMQ), :mod:`.proxy` (a TCP
proxy in front of the sandbox that forwards, refuses or hangs), :mod:`.rig` (the sandbox,
the processes, the sender and the check), :mod:`.scenarios` (the faults). ``ops/`` imports
product code, never ``tests``.
"""

from ops.chaos.scenarios import SCENARIOS, Result, Size, run_scenario

__all__ = ["SCENARIOS", "Result", "Size", "run_scenario"]
