"""The operator's dashboard: a small server-rendered page under ``/admin/``.

Served only when the config has an admin token, like the admin API. A browser cannot send a
bearer token by itself, so the dashboard has a login form: it takes the admin token once
(compared in constant time) and answers with a session cookie, signed with a key derived
from the admin token by HMAC (no new secret to configure; changing the token ends every
session). The cookie is HttpOnly, SameSite=Strict, limited to ``/admin``, Secure over
HTTPS, and lasts :data:`SESSION_MAX_AGE_S` from the login. Each session carries a random
CSRF token that every form (replay, purge, logout) sends back in a hidden field.

The page shows, per channel, the calls of the last minute against the limit and a bar chart
of the last hour (inline SVG drawn here: no JavaScript, works offline), backlog and its age,
paused and bad-token flags; the newest events and their outcome; the newest dead letters
with Replay and Purge; worker liveness. It reloads itself every :data:`REFRESH_S` seconds.
Everything is read through :mod:`worker.stats` and :mod:`worker.deadletter`; templates are
autoescaped and never see the admin token or a channel token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from flask import Response as HtmlResponse
from itsdangerous import BadSignature, URLSafeSerializer
from werkzeug.wrappers import Response

from worker.deadletter import (
    DeadLetter,
    DeadLetterFilter,
    count_dead,
    iso_utc,
    list_dead,
    purge,
    replay_batches,
)
from worker.runtime import Runtime
from worker.stats import ChannelView, WorkerView, channels_view, recent_events, workers_view

log = logging.getLogger(__name__)

COOKIE = "contactsync_dashboard"
COOKIE_PATH = "/admin"
SESSION_MAX_AGE_S = 12 * 3600
"""A session lasts this long from its login, however active."""
REFRESH_S = 10
DEAD_LETTERS_SHOWN = 50
EVENTS_SHOWN = 20
MESSAGE_SHOWN = 300
"""Characters of a dead letter's message shown in its row (all of it on hover)."""

CHART_SLOT = 5
CHART_BAR = 4
CHART_HEIGHT = 40
_KEY_PURPOSE = b"contactsync dashboard session v1"


def session_key(admin_token: str) -> bytes:
    """The key that signs dashboard sessions: HMAC-SHA256 of a fixed purpose under the
    admin token, so the token itself never signs anything and cannot be read back."""
    return hmac.new(admin_token.encode(), _KEY_PURPOSE, hashlib.sha256).digest()


@dataclass(frozen=True)
class Session:
    """A logged-in browser: its CSRF token, when it logged in, a message to show once."""

    csrf: str
    issued_at: float
    flash: tuple[str, str] | None = None
    """``(kind, text)``, kind one of ``ok``, ``warn``."""


@dataclass(frozen=True)
class Bar:
    """One minute's bar in a channel's chart (SVG user units)."""

    x: float
    y: float
    height: float
    calls: int
    minutes_ago: int


@dataclass(frozen=True)
class Chart:
    """A channel's calls per minute over the last hour, as an SVG bar chart."""

    width: int
    height: int
    bars: list[Bar]
    peak: int
    limit_y: float | None
    """Where the per-minute limit falls, when the peak reaches it."""
    total: int


def chart(per_minute: list[int], limit_per_minute: float) -> Chart:
    """Bars for the minutes with calls, scaled to the busiest minute (at least 1 px high);
    the limit line is drawn when some minute reached it."""
    peak = max(per_minute, default=0)
    top = max(peak, 1)
    slots = len(per_minute)
    bars = []
    for index, calls in enumerate(per_minute):
        if calls <= 0:
            continue
        height = round(max(1.0, calls / top * CHART_HEIGHT), 2)
        bars.append(
            Bar(
                x=index * CHART_SLOT,
                y=round(CHART_HEIGHT - height, 2),
                height=height,
                calls=calls,
                minutes_ago=slots - 1 - index,
            )
        )
    limit_y = None
    if limit_per_minute <= top:
        limit_y = round(CHART_HEIGHT - limit_per_minute / top * CHART_HEIGHT, 2)
    return Chart(
        width=slots * CHART_SLOT,
        height=CHART_HEIGHT,
        bars=bars,
        peak=peak,
        limit_y=limit_y,
        total=sum(per_minute),
    )


def duration(seconds: float) -> str:
    """``7 s``, ``4 min``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _number(value: float) -> str:
    return f"{value:g}"


def _limit_text(view: ChannelView) -> tuple[str, float]:
    per_minute = view.limit_calls * 60.0 / view.limit_period_s
    if view.limit_period_s == 60:
        return f"{view.limit_calls}/min", per_minute
    return (
        f"{view.limit_calls} per {_number(view.limit_period_s)} s "
        f"({_number(round(per_minute, 1))}/min)",
        per_minute,
    )


def _channel_row(view: ChannelView) -> dict[str, Any]:
    limit, per_minute = _limit_text(view)
    load = view.calls_last_minute / per_minute if per_minute else 0.0
    return {
        "name": view.name,
        "calls": view.calls_last_minute,
        "limit": limit,
        "load_percent": round(load * 100),
        "hot": load >= 0.9,
        "chart": chart(view.per_minute, per_minute),
        "backlog": view.backlog,
        "oldest": None if view.oldest_open_age_s is None else duration(view.oldest_open_age_s),
        "paused": duration(view.paused_for_s) if view.paused_for_s > 0 else None,
        "bad_token": view.bad_token,
        "bad_token_detail": view.bad_token_detail,
    }


def _event_row(event: dict[str, Any], now: float) -> dict[str, Any]:
    received = float(event["received_at"])
    return {
        **event,
        "ago": duration(now - received),
        "at": iso_utc(received),
        "outcome_class": str(event["outcome"]).replace(" ", "-"),
    }


def _dead_row(letter: DeadLetter, now: float) -> dict[str, Any]:
    message = letter.last_error or ""
    died = letter.finished_at
    return {
        "id": letter.id,
        "ago": None if died is None else duration(now - died),
        "at": iso_utc(died),
        "channel": letter.channel,
        "source": letter.source,
        "kind": letter.kind,
        "contact": letter.contact,
        "reason": letter.reason or "unknown",
        "status": letter.last_status,
        "message": message,
        "message_short": message
        if len(message) <= MESSAGE_SHOWN
        else message[:MESSAGE_SHOWN] + "…",
        "attempts": letter.attempts,
    }


def _worker_row(view: WorkerView, now: float) -> dict[str, Any]:
    return {
        "name": view.name,
        "alive": view.alive,
        "seen": duration(view.seen_ago_s),
        "up": duration(now - view.started_at),
        "done": view.done,
    }


def dashboard_blueprint(runtime: Runtime) -> Blueprint:
    """The dashboard for this runtime; its config must have an admin token."""
    token = runtime.config.admin.token
    if token is None:
        raise ValueError("admin.token is not set: the dashboard must not be served")
    expected = token.get_secret_value().encode()
    signer = URLSafeSerializer(session_key(token.get_secret_value()), salt="dashboard-session")
    dashboard = Blueprint("dashboard", __name__, url_prefix="/admin", template_folder="templates")

    def load_session() -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = signer.loads(raw)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        csrf, issued_at, flash = data.get("csrf"), data.get("iat"), data.get("flash")
        if not isinstance(csrf, str) or len(csrf) < 32:
            return None
        if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
            return None
        age = time.time() - issued_at
        if not -60 <= age < SESSION_MAX_AGE_S:
            return None
        shown = None
        if isinstance(flash, list) and len(flash) == 2 and all(isinstance(f, str) for f in flash):
            shown = (flash[0], flash[1])
        return Session(csrf=csrf, issued_at=float(issued_at), flash=shown)

    def store(response: Response, session: Session) -> Response:
        data: dict[str, Any] = {"csrf": session.csrf, "iat": session.issued_at}
        if session.flash is not None:
            data["flash"] = list(session.flash)
        remaining = max(1, int(session.issued_at + SESSION_MAX_AGE_S - time.time()))
        response.set_cookie(
            COOKIE,
            signer.dumps(data),
            max_age=remaining,
            path=COOKIE_PATH,
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
        return response

    def page(template: str, status: int = 200, **context: Any) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = HtmlResponse(render_template(template, nonce=nonce, **context), status=status)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    def to_login() -> Response:
        return redirect(url_for("dashboard.login"), code=303)

    def back(session: Session, kind: str, text: str) -> Response:
        paused = request.form.get("refresh") == "0"
        target = url_for("dashboard.index", refresh="0") if paused else url_for("dashboard.index")
        response = redirect(target, code=303)
        return store(response, Session(session.csrf, session.issued_at, (kind, text)))

    def checked() -> Session | Response:
        """The session of a form post with its CSRF token, else the answer to give."""
        session = load_session()
        if session is None:
            return to_login()
        given = request.form.get("csrf", "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            log.warning("dashboard: form refused, bad CSRF token from %s", request.remote_addr)
            return page(
                "dashboard/refused.html",
                403,
                detail="This form is stale or did not come from the dashboard. "
                "Reload the dashboard and try again.",
            )
        return session

    @dashboard.after_request
    def _headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @dashboard.get("/login")
    def login() -> Response:
        if load_session() is not None:
            return redirect(url_for("dashboard.index"), code=303)
        return page("dashboard/login.html")

    @dashboard.post("/login")
    def log_in() -> Response:
        given = request.form.get("token", "").strip().encode()
        if not given or not hmac.compare_digest(given, expected):
            log.warning("dashboard: login refused from %s", request.remote_addr)
            return page("dashboard/login.html", 401, error="That is not the admin token.")
        log.info("dashboard: login from %s", request.remote_addr)
        session = Session(csrf=secrets.token_urlsafe(32), issued_at=time.time())
        return store(redirect(url_for("dashboard.index"), code=303), session)

    @dashboard.post("/logout")
    def log_out() -> Response:
        session = checked()
        if not isinstance(session, Session):
            return session
        response = to_login()
        response.delete_cookie(
            COOKIE, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict"
        )
        return response

    @dashboard.get("/")
    def index() -> Response:
        session = load_session()
        if session is None:
            return to_login()
        now = time.time()
        engine = runtime.ledger.engine
        paused = request.args.get("refresh") == "0"
        response = page(
            "dashboard/page.html",
            csrf=session.csrf,
            flash=session.flash,
            refresh_s=None if paused else REFRESH_S,
            paused=paused,
            now=iso_utc(now),
            channels=[_channel_row(view) for view in channels_view(engine, runtime.config)],
            events=[_event_row(event, now) for event in recent_events(engine, limit=EVENTS_SHOWN)],
            dead=[_dead_row(letter, now) for letter in list_dead(engine, limit=DEAD_LETTERS_SHOWN)],
            dead_total=count_dead(engine),
            workers=[_worker_row(view, now) for view in workers_view(engine, now=now)],
        )
        if session.flash is not None:  # shown once
            store(response, Session(session.csrf, session.issued_at))
        return response

    @dashboard.post("/dead-letters/<int:command_id>/replay")
    def replay_one(command_id: int) -> Response:
        session = checked()
        if not isinstance(session, Session):
            return session
        ids: list[int] = []
        for batch in replay_batches(runtime, DeadLetterFilter(ids=[command_id])):
            ids += batch.ids
        if not ids:
            return back(session, "warn", f"Dead letter {command_id} is gone: replayed or purged.")
        log.info("dashboard: replayed dead letter %s", command_id)
        return back(session, "ok", f"Replayed dead letter {command_id}: it is pending again.")

    @dashboard.post("/dead-letters/<int:command_id>/purge")
    def purge_one(command_id: int) -> Response:
        session = checked()
        if not isinstance(session, Session):
            return session
        if not purge(runtime.ledger.engine, [command_id]):
            return back(session, "warn", f"Dead letter {command_id} is gone: replayed or purged.")
        log.info("dashboard: purged dead letter %s", command_id)
        return back(session, "ok", f"Purged dead letter {command_id}.")

    return dashboard
