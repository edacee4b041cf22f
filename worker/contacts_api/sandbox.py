"""A faithful local Contacts API, served over real HTTP, for tests, benchmarks and the demo.

Point a channel's base URL at ``http://127.0.0.1:PORT/api/v1`` and nothing else changes:
nothing patches ``requests``. The sandbox is strict about every documented rule (bearer
token per channel, 30 fields and 10 tags a request, the writable field names, Base64 ids on
Viber, ``%2B`` in phone lookups, Laravel-style pages, 200 calls a minute per token), so the
client cannot drift from the API unnoticed. Its state lives in :mod:`.sandbox_state`.

Every API call passes, in order:

1. the latency fault (sleeps ``latency_ms``);
2. authentication: no or unknown bearer token -> 401, not counted anywhere but
   ``unauthenticated``;
3. the forced-429 fault -> 429, logged as a refusal, takes no window slot;
4. the sliding window: full -> 429 ``{"message": "Too Many Attempts."}`` with ``Retry-After``
   (whole seconds until the oldest accepted call leaves the window), a refusal, no slot;
5. admission: from here the call holds a slot and is logged with its final status;
6. the hang fault (sleeps ``hang_s``) and then the 5xx fault. Both answer admitted calls,
   which count: the platform received them;
7. routing and the request's own rules: 200, or 403/404/405 as JSON.

The admin endpoints under ``/_sandbox/`` (no auth) read the log and change faults, tokens and
limits at run time; ``GET /_sandbox/`` lists them.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import quote, urlencode

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import BaseConverter
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from worker.config import AppConfig, load_config
from worker.contacts_api import limits
from worker.contacts_api.sandbox_state import (
    CallRecord,
    Faults,
    SandboxChannel,
    SandboxState,
)

__all__ = [
    "CallRecord",
    "Faults",
    "SandboxChannel",
    "SandboxConfig",
    "SandboxServer",
    "SandboxState",
    "create_sandbox_app",
    "parse_rate",
    "sandbox_state",
    "serve",
]

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/_sandbox"
NO_SUCH_CONTACT = "no such contact"
_STATE_KEY = "contacts_sandbox"
DEMO_MAIN_TOKEN = "sandbox-main-token"  # noqa: S105 - a public test token, not a secret
DEMO_VIBER_TOKEN = "sandbox-viber-token"  # noqa: S105 - a public test token, not a secret


def parse_rate(text: str) -> tuple[int, float]:
    """Read a limit written ``CALLS/SECONDS`` (``"20/6"`` -> ``(20, 6.0)``)."""
    calls, slash, period = text.strip().partition("/")
    try:
        parsed = (int(calls), float(period))
    except ValueError:
        parsed = (0, 0.0)
    if not slash or parsed[0] < 1 or not math.isfinite(parsed[1]) or parsed[1] <= 0:
        raise ValueError(
            f"rate {text!r}: expected CALLS/SECONDS with CALLS >= 1 and SECONDS > 0, e.g. 200/60"
        )
    return parsed


@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox's channels and starting limits and faults."""

    channels: tuple[SandboxChannel, ...]
    rate_limit: tuple[int, float] | None = None
    """When set, overrides every channel's own limit."""
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    """Seeds the random source of the faults, for repeatable runs."""

    def __post_init__(self) -> None:
        names = [channel.name for channel in self.channels]
        tokens = [channel.token for channel in self.channels]
        if len(set(names)) != len(names):
            raise ValueError("sandbox channels must have distinct names")
        if len(set(tokens)) != len(tokens) or not all(tokens):
            raise ValueError("sandbox channels must have distinct, non-empty tokens")

    @classmethod
    def demo(
        cls,
        *,
        rate_limit: tuple[int, float] | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> SandboxConfig:
        """One WhatsApp channel ``main`` and one Viber channel ``viber``, any custom field."""
        channels = (
            SandboxChannel(token=DEMO_MAIN_TOKEN, name="main", platform="whatsapp"),
            SandboxChannel(token=DEMO_VIBER_TOKEN, name="viber", platform="viber"),
        )
        return cls(channels, rate_limit, faults or Faults(), seed)

    @classmethod
    def from_app_config(
        cls,
        app_config: AppConfig,
        *,
        rate_limit: tuple[int, float] | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> SandboxConfig:
        """The channels of the product's config: their tokens, platforms, fields and limits.

        ``rate_limit``, when given, overrides every channel's own limit.
        """
        channels = []
        for name, channel in app_config.channels.items():
            if channel.token is None:
                raise ValueError(f"channels.{name}.token: no token (resolve secrets first)")
            fields = channel.custom_fields
            channels.append(
                SandboxChannel(
                    token=channel.token.get_secret_value(),
                    name=name,
                    platform=channel.platform,
                    custom_fields=frozenset(fields) if fields is not None else None,
                    rate_limit=(channel.rate_limit.calls, channel.rate_limit.period_s),
                )
            )
        return cls(tuple(channels), rate_limit, faults or Faults(), seed)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        rate_limit: tuple[int, float] | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> SandboxConfig:
        """The channels of a product config file (its secrets must all be set)."""
        app_config = load_config(path, require_secrets=True)
        return cls.from_app_config(app_config, rate_limit=rate_limit, faults=faults, seed=seed)

    def with_channels(self, *channels: SandboxChannel) -> SandboxConfig:
        """A copy with more channels."""
        return replace(self, channels=(*self.channels, *channels))

    def build_state(self) -> SandboxState:
        """A fresh in-memory state for this configuration."""
        return SandboxState(
            self.channels, rate_limit=self.rate_limit, faults=self.faults, seed=self.seed
        )


# -- the app --------------------------------------------------------------------------------


class GeneralError(Exception):
    """The API's 403 "General": a request that breaks one of its rules (a refusal)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _ContactIdConverter(BaseConverter):
    """A path id of any characters: a Base64 id may hold ``/`` (sent as ``%2F``)."""

    regex = ".+?"
    part_isolating = False


class _JsonProvider(DefaultJSONProvider):
    sort_keys = False  # contact fields keep the order they were written in


def create_sandbox_app(config: SandboxConfig) -> Flask:
    """The sandbox as a Flask app: the API under ``/api/v1``, admin under ``/_sandbox``."""
    app = Flask("contacts_sandbox")
    app.json = _JsonProvider(app)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False  # OPTIONS is a 405 like any other method
    app.url_map.merge_slashes = False
    app.url_map.converters["contact_id"] = _ContactIdConverter
    app.extensions[_STATE_KEY] = config.build_state()
    app.register_blueprint(api, url_prefix=API_PREFIX)
    app.register_blueprint(admin, url_prefix=ADMIN_PREFIX)
    app.before_request(_admit)
    app.after_request(_log_call)
    app.register_error_handler(GeneralError, _refusal)
    app.register_error_handler(HTTPException, _http_error)
    return app


def sandbox_state(app: Flask) -> SandboxState:
    """The state behind a sandbox app."""
    return cast(SandboxState, app.extensions[_STATE_KEY])


def _state() -> SandboxState:
    return sandbox_state(current_app)


def _error(status: int, message: str) -> Response:
    response = jsonify(status="error", message=message)
    response.status_code = status
    return response


def _too_many(wait_s: float, faults: Faults) -> Response:
    response = jsonify(message="Too Many Attempts.")
    response.status_code = 429
    if faults.retry_after:
        response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return response


def _server_error(state: SandboxState) -> Response:
    status: int = state.pick([500, 502, 503])
    if state.chance(0.5):
        return _error(status, "Server Error")
    page = f"<html><body><h1>{status} Server Error</h1></body></html>"
    return Response(page, status=status, mimetype="text/html")


def _bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _admit() -> Response | None:
    """Steps 1 to 6 of the module docstring, for every API path."""
    if request.path != API_PREFIX and not request.path.startswith(API_PREFIX + "/"):
        return None
    state = _state()
    g.generation = state.generation
    faults = state.faults
    if state.sleep(faults.latency_ms / 1000):
        return _error(503, "sandbox reset")
    token = _bearer_token()
    channel = state.channel_for_token(token) if token else None
    if channel is None:
        state.note_unauthenticated()
        return _error(401, "Unauthenticated.")
    if state.chance(faults.rate_limit_rate):
        state.note_refused(channel.name, 429)
        return _too_many(1, faults)
    admission = state.admit(channel.name)
    if admission.wait_s is not None:
        state.note_refused(channel.name, 429)
        return _too_many(admission.wait_s, faults)
    g.channel, g.admitted_at = channel, admission.at
    if state.chance(faults.hang_rate) and state.sleep(faults.hang_s):
        return _error(503, "sandbox reset")
    if state.chance(faults.error_rate):
        return _server_error(state)
    return None


def _request_body() -> Any:
    data = request.get_data(cache=True)
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _log_call(response: Response) -> Response:
    channel: SandboxChannel | None = g.get("channel")
    if channel is not None:
        record = CallRecord(
            at=g.admitted_at,
            method=request.method,
            path=request.path,
            query=request.query_string.decode("ascii", "replace"),
            status=response.status_code,
            body=_request_body(),
        )
        _state().record_call(channel.name, g.generation, record)
    return response


def _refusal(error: GeneralError) -> Response:
    return _error(403, error.message)


def _http_error(error: HTTPException) -> Response:
    if error.code is not None and error.code < 400:  # a redirect from routing
        return cast(Response, error.get_response())
    if isinstance(error, MethodNotAllowed):
        response = _error(405, "Method not allowed")
        response.headers["Allow"] = ", ".join(error.valid_methods or [])
        return response
    if error.code == 404:
        return _error(404, "Not found")
    return _error(error.code or 500, error.description or "error")


# -- the six requests -----------------------------------------------------------------------

api = Blueprint("contacts_api", __name__)


def _channel() -> SandboxChannel:
    return cast(SandboxChannel, g.channel)


def _json_object(*keys: str) -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict) or set(body) != set(keys):
        shape = ", ".join(f'"{key}": [...]' for key in keys)
        raise GeneralError(f"the body must be a JSON object {{{shape}}}")
    return body


def _custom_fields(channel: SandboxChannel) -> dict[str, Any]:
    items = _json_object("custom_fields")["custom_fields"]
    if not isinstance(items, list) or not items:
        raise GeneralError("custom_fields must be a non-empty list of {name, value} objects")
    if len(items) > limits.MAX_FIELDS_PER_CALL:
        raise GeneralError(f"Maximum {limits.MAX_FIELDS_PER_CALL} fields per request")
    fields: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            raise GeneralError("each custom field must be an object {name, value}")
        name, value = item["name"], item["value"]
        if not isinstance(name, str) or not name:
            raise GeneralError("a custom field name must be a non-empty string")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise GeneralError(f"the value of {name} must be a string, number or boolean")
        if not channel.writable(name):
            raise GeneralError(f"the field {name} cannot be updated")
        fields[name] = value
    return fields


def _tags() -> list[str]:
    tags = _json_object("tags")["tags"]
    if not isinstance(tags, list) or not tags:
        raise GeneralError("tags must be a non-empty list")
    if len(tags) > limits.MAX_TAGS_PER_CALL:
        raise GeneralError(f"Maximum {limits.MAX_TAGS_PER_CALL} tags per request")
    if not all(isinstance(tag, str) and tag.strip() for tag in tags):
        raise GeneralError("tags must be non-empty strings")
    return tags


def _contact_id(channel: SandboxChannel, path_id: str) -> str:
    """The contact id a path names: Viber channels must send it Base64-encoded."""
    if channel.platform != "viber":
        return path_id
    try:
        decoded = base64.b64decode(path_id.encode("ascii"), validate=True)
        contact_id = decoded.decode("utf-8")
    except ValueError:  # binascii.Error and the Unicode errors are ValueErrors
        raise GeneralError(NO_SUCH_CONTACT) from None
    if base64.b64encode(decoded).decode("ascii") != path_id:
        raise GeneralError(NO_SUCH_CONTACT)
    return contact_id


def _by_id_path(path_id: str) -> str:
    # The id converter takes slashes, so ".../tags" lands here for GET and PUT.
    if path_id.endswith("/tags"):
        raise MethodNotAllowed(valid_methods=["POST", "DELETE"])
    return path_id


@api.get("/contact/by_custom_field")
def find_by_custom_field() -> Response:
    """Page ``page`` of the contacts whose field ``name`` reads ``value``."""
    name, value = request.args.get("name", ""), request.args.get("value", "")
    if not name or not value:
        raise GeneralError("The name and value fields are required.")
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    matches = _state().find(_channel().name, name, value)
    size = limits.PAGE_SIZE
    last_page = max(1, math.ceil(len(matches) / size))
    items = matches[(page - 1) * size : page * size]
    path = request.base_url

    def link(number: int) -> str:
        query = urlencode({"name": name, "value": value, "page": number}, quote_via=quote)
        return f"{path}?{query}"

    first = (page - 1) * size + 1
    return jsonify(
        data=[contact.to_json() for contact in items],
        links={
            "first": link(1),
            "last": link(last_page),
            "prev": link(page - 1) if page > 1 else None,
            "next": link(page + 1) if page < last_page else None,
        },
        meta={
            "current_page": page,
            "from": first if items else None,
            "last_page": last_page,
            "path": path,
            "per_page": size,
            "to": first + len(items) - 1 if items else None,
            "total": len(matches),
        },
    )


@api.get("/contact/<contact_id:path_id>")
def get_contact(path_id: str) -> Response:
    """One contact."""
    channel = _channel()
    contact = _state().contact(channel.name, _contact_id(channel, _by_id_path(path_id)))
    if contact is None:
        raise GeneralError(NO_SUCH_CONTACT)
    return jsonify(data=contact.to_json())


@api.put("/contact/<contact_id:path_id>")
def update_contact(path_id: str) -> Response:
    """Write up to 30 fields on a contact."""
    channel = _channel()
    contact_id = _contact_id(channel, _by_id_path(path_id))
    if not _state().update_contact(channel.name, contact_id, _custom_fields(channel)):
        raise GeneralError(NO_SUCH_CONTACT)
    return jsonify(data={"id": contact_id})


@api.route("/contact/<contact_id:path_id>/tags", methods=["POST", "DELETE"])
def change_tags(path_id: str) -> Response:
    """Add (POST) or remove (DELETE) up to 10 tags."""
    channel, state = _channel(), _state()
    contact_id = _contact_id(channel, path_id)
    change = state.add_tags if request.method == "POST" else state.remove_tags
    if not change(channel.name, contact_id, _tags()):
        raise GeneralError(NO_SUCH_CONTACT)
    return jsonify(status="success")


@api.post("/contact")
def create_contact() -> Response:
    """Create a contact with up to 30 fields."""
    channel = _channel()
    contact = _state().create_contact(channel.name, _custom_fields(channel))
    return jsonify(data={"id": contact.id})


# -- admin ----------------------------------------------------------------------------------

admin = Blueprint("sandbox_admin", __name__)

ADMIN_ENDPOINTS = {
    "GET /_sandbox/log": "per channel: accepted calls, statuses, refusals, max_in_window",
    "GET /_sandbox/calls?channel=NAME": "a channel's accepted calls with request bodies",
    "GET /_sandbox/contacts?channel=NAME": "a channel's contacts",
    "POST /_sandbox/contacts?channel=NAME": 'seed a contact: {"custom_fields": {}, "tags": []}',
    "GET|POST /_sandbox/faults": "read or change latency_ms, error_rate, rate_limit_rate, "
    "hang_s, hang_rate, retry_after",
    "POST /_sandbox/rate": '{"rate": "20/6"} or {"calls", "period_s"}, optional "channel"',
    "PUT /_sandbox/tokens": '{"channel", "token", optional "platform", "custom_fields"}',
    "POST /_sandbox/reset": "back to the configured channels and faults, no contacts or log",
}


def _admin_body() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _channel_arg() -> str:
    name = request.args.get("channel", "")
    if name not in _state().channel_names():
        raise KeyError(f"no sandbox channel named {name!r}")
    return name


@admin.errorhandler(ValueError)
def _admin_bad_request(error: ValueError) -> Response:
    return _error(400, str(error))


@admin.errorhandler(KeyError)
def _admin_not_found(error: KeyError) -> Response:
    return _error(404, str(error.args[0]) if error.args else "not found")


@admin.get("/")
def admin_index() -> Response:
    """What the admin endpoints do."""
    return jsonify(api=API_PREFIX, channels=_state().channel_names(), endpoints=ADMIN_ENDPOINTS)


@admin.get("/log")
def admin_log() -> Response:
    """The call log summary."""
    return jsonify(_state().log())


@admin.get("/calls")
def admin_calls() -> Response:
    """A channel's accepted calls."""
    return jsonify(calls=[call.to_json() for call in _state().calls(_channel_arg())])


@admin.get("/contacts")
def admin_contacts() -> Response:
    """A channel's contacts."""
    return jsonify(data=_state().contacts(_channel_arg()))


@admin.post("/contacts")
def admin_seed_contact() -> Response:
    """Store a contact directly, with values of any JSON type (booleans included)."""
    name, body = _channel_arg(), _admin_body()
    fields, tags = body.get("custom_fields", {}), body.get("tags", [])
    if not isinstance(fields, dict) or not isinstance(tags, list):
        raise ValueError('expected {"custom_fields": {...}, "tags": [...]}')
    contact = _state().create_contact(name, fields, [str(tag) for tag in tags])
    return jsonify(data=contact.to_json())


@admin.route("/faults", methods=["GET", "POST"])
def admin_faults() -> Response:
    """Read, or change some of, the fault settings."""
    state = _state()
    faults = state.set_faults(**_admin_body()) if request.method == "POST" else state.faults
    return jsonify(faults=asdict(faults))


@admin.post("/rate")
def admin_rate() -> Response:
    """Change the limit of one channel or all."""
    body = _admin_body()
    if "rate" in body:
        calls, period_s = parse_rate(str(body["rate"]))
    else:
        calls, period_s = parse_rate(f"{body.get('calls')}/{body.get('period_s')}")
    channel = body.get("channel")
    if channel is not None and channel not in _state().channel_names():
        raise KeyError(f"no sandbox channel named {channel!r}")
    _state().set_rate(calls, period_s, channel=channel)
    return jsonify(_state().log())


@admin.put("/tokens")
def admin_tokens() -> Response:
    """Add a channel, or replace a channel's token."""
    body = _admin_body()
    name, token = body.get("channel"), body.get("token")
    if not isinstance(name, str) or not name or not isinstance(token, str) or not token:
        raise ValueError('expected {"channel": NAME, "token": TOKEN}')
    options: dict[str, Any] = {"platform": body.get("platform")}
    if "custom_fields" in body:
        fields = body["custom_fields"]
        options["custom_fields"] = frozenset(map(str, fields)) if fields is not None else None
    _state().set_channel(name, token, **options)
    return jsonify(channels=_state().channel_names())


@admin.post("/reset")
def admin_reset() -> Response:
    """Back to the starting state."""
    _state().reset()
    return jsonify(status="success")


# -- serving --------------------------------------------------------------------------------


class _QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _make_server(host: str, port: int, app: Flask, *, log_requests: bool) -> BaseWSGIServer:
    handler = None if log_requests else _QuietRequestHandler
    return make_server(host, port, app, threaded=True, request_handler=handler)


class SandboxServer:
    """The sandbox served on a real port from a daemon thread; a context manager.

    The port is bound on construction (``port=0`` picks a free one); :meth:`start` serves.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_requests: bool = False,
    ) -> None:
        self.config = config or SandboxConfig.demo()
        self.app = create_sandbox_app(self.config)
        self.state = sandbox_state(self.app)
        self._server = _make_server(host, port, self.app, log_requests=log_requests)
        self.port: int = self._server.port
        self.url = f"http://{host}:{self.port}"
        self.api_url = f"{self.url}{API_PREFIX}"
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SandboxServer(url={self.url!r})"

    def token(self, channel: str) -> str:
        """The current token of a channel."""
        return self.state.channel(channel).token

    def start(self) -> SandboxServer:
        """Serve in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="contacts-sandbox", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release sleeping calls, stop serving and close the port."""
        self.state.stop()
        if self._thread is None:
            self._server.server_close()
            return
        self._server.shutdown()  # serve_forever closes the socket on its way out
        self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _describe(channels: Iterable[SandboxChannel]) -> str:
    return ", ".join(f"{channel.name} ({channel.platform})" for channel in channels)


def serve(host: str, port: int, config: SandboxConfig, *, log_requests: bool = True) -> None:
    """Serve the sandbox until Ctrl-C or SIGTERM; prints one line with the URL first."""
    app = create_sandbox_app(config)
    server = _make_server(host, port, app, log_requests=log_requests)
    url = f"http://{host}:{server.port}"
    print(
        f"Contacts API sandbox on {url}{API_PREFIX} - channels: {_describe(config.channels)}"
        f" - admin: {url}{ADMIN_PREFIX}/",
        file=sys.stdout,
        flush=True,
    )

    def _interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        server.serve_forever()  # returns on KeyboardInterrupt and closes the socket
    finally:
        sandbox_state(app).stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
