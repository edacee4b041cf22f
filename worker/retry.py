"""The one retry policy: what to do after a command's attempt fails.

Pure: given the error, the attempts already spent and the policy, decide whether to try
again (and when) or to make the command a dead letter now. Every task uses it.

- 429: wait for Retry-After, else the configured pause (default: the channel's rate-limit
  period, after which its window is surely clear). No attempt is spent.
- Passing failures (5xx, timeouts, connection failures): exponential backoff with full
  jitter, capped; an attempt is spent; when the attempts are used up, a dead letter.
- Permanent refusals (401, 403, 405, validation, "no such contact"): a dead letter now.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from worker.config import RetryConfig
from worker.contacts_api.errors import (
    ContactsApiError,
    RateLimited,
    TransientError,
)


@dataclass(frozen=True)
class Decision:
    """Retry after ``delay_s`` (spending an attempt or not), or dead-letter now."""

    retry: bool
    delay_s: float = 0.0
    spend_attempt: bool = True
    reason: str = ""


def backoff_s(attempt: int, policy: RetryConfig, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (1-based): full jitter over a capped
    exponential, so that many commands failing together do not retry together."""
    ceiling = min(policy.cap_s, policy.base_s * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def decide(
    error: ContactsApiError,
    *,
    attempts: int,
    policy: RetryConfig,
    period_s: float,
    rng: random.Random | None = None,
) -> Decision:
    """What to do after ``error``, when ``attempts`` attempts were spent before this one."""
    if isinstance(error, RateLimited):
        pause = error.retry_after
        if pause is None:
            pause = policy.rate_limited_pause_s or period_s
        return Decision(retry=True, delay_s=pause, spend_attempt=False, reason=error.reason)
    if isinstance(error, TransientError):
        spent = attempts + 1
        if spent >= policy.max_attempts:
            return Decision(retry=False, reason=error.reason)
        return Decision(retry=True, delay_s=backoff_s(spent, policy, rng), reason=error.reason)
    return Decision(retry=False, reason=error.reason)


def schedule_span_s(policy: RetryConfig) -> tuple[float, float]:
    """The shortest and longest total wait before a command that always fails passingly
    becomes a dead letter (for the docs and ``check-config``)."""
    waits = [
        min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
        for attempt in range(1, policy.max_attempts)
    ]
    return sum(w / 2 for w in waits), sum(waits)
