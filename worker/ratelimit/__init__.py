"""Rate limiting per channel, shared by every worker process on every machine.

``schedule`` is the arithmetic (pure), ``sql`` keeps each channel's schedule in the ledger
database and reads that database's clock, and ``pacer`` spaces one command's calls on it.
"""

from worker.ratelimit.pacer import CallTimes, Deferred, Pacer
from worker.ratelimit.schedule import Limit
from worker.ratelimit.sql import SqlLimiter

__all__ = ["CallTimes", "Deferred", "Limit", "Pacer", "SqlLimiter"]
