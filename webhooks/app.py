"""The Flask app factory: ``create_app(runtime)`` wires the receiver and health endpoints."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

from webhooks.admin import admin_blueprint
from webhooks.dashboard import dashboard_blueprint
from webhooks.errors import install_error_handlers
from webhooks.metrics import metrics_blueprint
from webhooks.openapi import openapi_blueprint
from webhooks.receiver import Receiver, receiver_blueprint
from worker.ledger.db import ping
from worker.runtime import Runtime


def create_app(runtime: Runtime) -> Flask:
    """The receiver app for this runtime (config, ledger, broker)."""
    app = Flask("contactsync")
    hops = runtime.settings.trust_proxy_hops
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    receiver = Receiver.from_runtime(runtime)
    app.config["MAX_CONTENT_LENGTH"] = receiver.largest_cap() + 1
    app.extensions["contactsync"] = runtime
    install_error_handlers(app)
    app.register_blueprint(receiver_blueprint(receiver))
    app.register_blueprint(metrics_blueprint(runtime, receiver.sources))  # GET /metrics
    app.register_blueprint(openapi_blueprint())
    if runtime.config.admin.token is not None:  # no token, no admin API (404)
        app.register_blueprint(admin_blueprint(runtime))
        app.register_blueprint(dashboard_blueprint(runtime))  # the page at /admin/

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        checks = {"ledger": _check(lambda: ping(runtime.ledger.engine))}
        checks["broker"] = _check(lambda: _ping_broker(runtime))
        ready = all(value == "ok" for value in checks.values())
        return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), (
            200 if ready else 503
        )

    return app


def _check(probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as error:
        return f"failed: {type(error).__name__}"
    return "ok"


def _ping_broker(runtime: Runtime) -> None:
    with runtime.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
