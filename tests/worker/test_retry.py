"""The one retry policy: what each failure leads to."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config import RetryConfig
from worker.contacts_api.errors import (
    ConnectionFailed,
    ContactsApiError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    ValidationError,
)
from worker.retry import backoff_s, decide, schedule_span_s

POLICY = RetryConfig()


def test_429_waits_for_retry_after_and_spends_no_attempt() -> None:
    decision = decide(
        RateLimited("slow down", retry_after=7), attempts=3, policy=POLICY, period_s=60
    )
    assert decision.retry and decision.delay_s == 7 and not decision.spend_attempt


def test_429_without_retry_after_pauses_one_period() -> None:
    decision = decide(RateLimited("slow down"), attempts=0, policy=POLICY, period_s=60)
    assert decision.delay_s == 60 and not decision.spend_attempt


def test_429_with_a_configured_pause() -> None:
    policy = RetryConfig(rate_limited_pause_s=5)
    assert decide(RateLimited("x"), attempts=0, policy=policy, period_s=60).delay_s == 5


@pytest.mark.parametrize(
    "error", [ServerError("x", status=502), Timeout("x"), ConnectionFailed("x")]
)
def test_passing_failures_back_off_and_spend_an_attempt(error: ContactsApiError) -> None:
    decision = decide(error, attempts=0, policy=POLICY, period_s=60, rng=random.Random(1))
    assert decision.retry and decision.spend_attempt
    assert POLICY.base_s / 2 <= decision.delay_s <= POLICY.base_s


def test_passing_failures_become_dead_letters_when_attempts_run_out() -> None:
    last = decide(Timeout("x"), attempts=POLICY.max_attempts - 1, policy=POLICY, period_s=60)
    assert not last.retry and last.reason == "timeout"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (Unauthorized("x", status=401), "unauthorized"),
        (Forbidden("x", status=403), "forbidden"),
        (NotFound("no such contact", status=403), "no_such_contact"),
        (MethodNotAllowed("x", status=405), "method_not_allowed"),
        (ValidationError("x"), "invalid"),
    ],
)
def test_permanent_refusals_are_dead_letters_at_once(error: ContactsApiError, reason: str) -> None:
    decision = decide(error, attempts=0, policy=POLICY, period_s=60)
    assert not decision.retry and decision.reason == reason


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_backoff_stays_within_half_and_whole_of_its_capped_ceiling(attempt: int, seed: int) -> None:
    delay = backoff_s(attempt, POLICY, random.Random(seed))
    ceiling = min(POLICY.cap_s, POLICY.base_s * 2 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_default_schedule_spans_about_an_hour() -> None:
    low, high = schedule_span_s(POLICY)
    assert (low, high) == (1987.5, 3975.0)
