"""Read models for operators: per-channel load against its limit, backlog and its age,
recent events and their outcome, dead letters by reason, worker liveness.

Used by the dashboard, the admin API and ``contactsync status``; reads only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from worker.config import AppConfig
from worker.ledger.schema import OPEN_STATES, channel_minutes, channels, commands, events, workers

ALIVE_S = 30.0
"""A worker whose heartbeat is older than this is shown as gone."""


@dataclass(frozen=True)
class ChannelView:
    """One channel, as an operator sees it."""

    name: str
    limit_calls: int
    limit_period_s: float
    calls_last_minute: int
    per_minute: list[int] = field(repr=False)
    """Calls in each of the last 60 minutes, oldest first (the current minute last)."""
    backlog: int
    oldest_open_age_s: float | None
    paused_for_s: float
    bad_token: bool
    bad_token_detail: str | None


@dataclass(frozen=True)
class WorkerView:
    """One worker process, from its heartbeat."""

    name: str
    started_at: float
    seen_ago_s: float
    done: int
    alive: bool


def channels_view(
    engine: Engine, config: AppConfig, *, now: float | None = None
) -> list[ChannelView]:
    """Every configured channel, with its activity."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    with engine.connect() as connection:
        minutes = connection.execute(
            select(
                channel_minutes.c.channel, channel_minutes.c.minute, channel_minutes.c.calls
            ).where(channel_minutes.c.minute > minute - 60)
        ).all()
        backlog = {
            row[0]: (row[1], row[2])
            for row in connection.execute(
                select(
                    commands.c.channel,
                    func.count().label("count"),
                    func.min(commands.c.created_at).label("oldest"),
                )
                .where(commands.c.state.in_(OPEN_STATES))
                .group_by(commands.c.channel)
            )
        }
        limiter = {row.name: row for row in connection.execute(select(channels))}
    views = []
    for name, spec in config.channels.items():
        series = [0] * 60
        for row in minutes:
            if row.channel == name:
                series[59 - (minute - row.minute)] += row.calls
        count, oldest = backlog.get(name, (0, None))
        state = limiter.get(name)
        starts = [float(t) for t in (state.schedule if state is not None else []) or []]
        window = spec.rate_limit.period_s
        views.append(
            ChannelView(
                name=name,
                limit_calls=spec.rate_limit.calls,
                limit_period_s=window,
                calls_last_minute=sum(1 for t in starts if now - 60 <= t <= now)
                if starts
                else series[-1],
                per_minute=series,
                backlog=int(count),
                oldest_open_age_s=None if oldest is None else max(0.0, now - float(oldest)),
                paused_for_s=max(0.0, float(state.paused_until) - now)
                if state is not None
                else 0.0,
                bad_token=state is not None and state.bad_token_at is not None,
                bad_token_detail=state.bad_token_detail if state is not None else None,
            )
        )
    return views


def recent_events(engine: Engine, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest events with the states of their commands."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(events.c.id, events.c.source, events.c.key, events.c.type, events.c.received_at)
            .order_by(events.c.id.desc())
            .limit(limit)
        ).all()
        ids = [row.id for row in rows]
        states: dict[int, list[str]] = {}
        if ids:
            for command in connection.execute(
                select(commands.c.event_id, commands.c.state).where(commands.c.event_id.in_(ids))
            ):
                states.setdefault(command.event_id, []).append(command.state)
    return [
        {
            "id": row.id,
            "source": row.source,
            "key": row.key,
            "type": row.type,
            "received_at": row.received_at,
            "outcome": _outcome(states.get(row.id, [])),
        }
        for row in rows
    ]


def _outcome(states: list[str]) -> str:
    if not states:
        return "no commands"
    if all(state == "done" for state in states):
        return "done"
    if any(state == "dead" for state in states):
        return "dead"
    return "in progress"


def workers_view(engine: Engine, *, now: float | None = None) -> list[WorkerView]:
    """Workers that sent a heartbeat in the last day."""
    now = time.time() if now is None else now
    with engine.connect() as connection:
        rows = connection.execute(select(workers).order_by(workers.c.name)).all()
    return [
        WorkerView(
            name=row.name,
            started_at=row.started_at,
            seen_ago_s=max(0.0, now - row.seen_at),
            done=int(row.done),
            alive=now - row.seen_at <= ALIVE_S,
        )
        for row in rows
    ]


def as_json(view: ChannelView | WorkerView) -> dict[str, Any]:
    """A view as plain JSON-ready values."""
    return asdict(view)
