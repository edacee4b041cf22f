"""Settings: ``CONTACTSYNC_*`` environment variables and one YAML config file.

The environment says where things are (config file, ledger database, broker, data folder);
the YAML file describes the deployment (the Contacts API, channels, sources). Both are
parsed once at start-up; a bad value fails with the key that holds it and the reason.
Secrets are :class:`pydantic.SecretStr`: they never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://app.heyx.io/api/v1"


class ConfigError(Exception):
    """The settings or the config file are not valid; the message names the key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    """A channel's limit: ``calls`` in any window of ``period_s`` seconds."""

    calls: PositiveInt = 200
    period_s: PositiveFloat = 60.0
    margin_s: NonNegativeFloat = 0.25
    """Kept between windows, for the jitter between a reserved start and the API seeing
    the call (see docs/rate-limiting.md)."""


class ContactsApiConfig(_Strict):
    """Where the Contacts API is and how long to wait for it."""

    base_url: str = DEFAULT_BASE_URL
    connect_timeout_s: PositiveFloat = 3.05
    read_timeout_s: PositiveFloat = 10.0


def _resolve_secret(
    literal: SecretStr | None, env_name: str | None, env: Mapping[str, str], key: str
) -> SecretStr | None:
    if literal is not None and env_name is not None:
        raise ValueError(f"{key}: give either the secret or its _env variable, not both")
    if env_name is not None:
        value = env.get(env_name)
        return SecretStr(value) if value else None
    return literal


class ChannelConfig(_Strict):
    """One messaging channel: its token, platform and rate limit."""

    token: SecretStr | None = None
    token_env: str | None = None
    platform: Literal["whatsapp", "viber", "messenger", "telegram", "line", "sms", "other"] = (
        "whatsapp"
    )
    rate_limit: RateLimit = RateLimit()
    base_url: str | None = None
    """Overrides ``contacts_api.base_url`` for this channel (the sandbox uses this)."""
    custom_fields: list[str] | None = None
    """The channel's custom field keys, when known: other names are refused before a call."""


class RouteRule(_Strict):
    """Send a record to ``channel`` when every ``when`` key has the given value."""

    when: dict[str, str]
    channel: str


class SourceConfig(BaseModel):
    """One webhook source: the kind of sender, its secret, default channel and mapping.

    Keys beyond these are the kind's own options (``signature_versions`` for HubSpot,
    ``organization_id`` for Salesforce…), validated by the kind at start-up.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = "generic"
    secret: SecretStr | None = None
    secret_env: str | None = None
    channel: str | None = None
    max_body_bytes: PositiveInt = 1024 * 1024
    match: str | None = None
    """The contact field that names the contact (default: the kind's)."""
    fields: dict[str, str | None] = Field(default_factory=dict)
    """Record key -> contact field, over the kind's defaults; ``null`` drops a default."""
    tags: list[str] = Field(default_factory=list)
    """Tags added with every record."""
    tags_from: list[str] = Field(default_factory=list)
    """Record keys whose values become tags (comma-separated values give several)."""
    routes: list[RouteRule] = Field(default_factory=list)
    """Rules that send a record to another channel; the first that matches wins."""

    @property
    def options(self) -> dict[str, Any]:
        """The kind's own keys."""
        return dict(self.model_extra or {})


class AdminConfig(_Strict):
    """The admin API's bearer token; without one, the admin API is not served."""

    token: SecretStr | None = None
    token_env: str | None = None


class RetryConfig(_Strict):
    """The one retry policy (see ``worker/retry.py`` and ``docs/retries.md``)."""

    max_attempts: PositiveInt = 12
    """Attempts before a command failing with passing errors becomes a dead letter."""
    base_s: PositiveFloat = 5.0
    """The first backoff; each later one doubles, with full jitter, up to ``cap_s``."""
    cap_s: PositiveFloat = 900.0
    rate_limited_pause_s: PositiveFloat | None = None
    """Pause after a 429 that has no Retry-After; default: the channel's ``period_s``."""
    rate_limited_horizon_s: PositiveFloat = 86400.0
    """A command refused with 429 for longer than this becomes a dead letter."""


class WorkerConfig(_Strict):
    """How workers and the reconciler behave."""

    lease_s: PositiveFloat = 60.0
    """How long a claim lasts without renewal; a dead worker's commands return after it."""
    reconcile_every_s: PositiveFloat = 5.0
    republish_after_s: PositiveFloat = 60.0
    """A due command whose message has not been taken for this long is published again."""
    inline_wait_max_s: PositiveFloat = 2.0
    """A worker sleeps for a rate-limit start this near; a later one frees the worker."""
    countdown_max_s: PositiveFloat = 60.0
    """A command waiting up to this long for its start is sent back with a countdown;
    a longer wait lives in the ledger until the reconciler publishes it."""
    lead_s: NonNegativeFloat = 0.5
    """How early a deferred command is delivered before its start."""
    not_found_trust_s: NonNegativeFloat = 300.0
    """A pass deferred after its lookup found no contact creates it on its next claim
    without looking again if that lookup is at most this old (the contact's commands run
    one at a time, so only a create by someone else could change the answer); 0 looks
    again every time."""
    relay_every_s: PositiveFloat = 0.05
    """How often each worker's relay looks for recorded commands to publish (the outbox);
    it looks again at once while it finds full batches."""
    relay_batch: PositiveInt = 500
    """The most outbox rows a relay publishes in one transaction."""


class AppConfig(_Strict):
    """The YAML config file, validated."""

    contacts_api: ContactsApiConfig = ContactsApiConfig()
    retry: RetryConfig = RetryConfig()
    worker: WorkerConfig = WorkerConfig()
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    admin: AdminConfig = AdminConfig()

    @model_validator(mode="after")
    def _sources_name_known_channels(self) -> AppConfig:
        known = ", ".join(sorted(self.channels)) or "none"
        for name, source in self.sources.items():
            if source.channel is not None and source.channel not in self.channels:
                raise ValueError(
                    f"sources.{name}.channel: no channel named {source.channel!r} "
                    f"(channels: {known})"
                )
            for index, route in enumerate(source.routes):
                if route.channel not in self.channels:
                    raise ValueError(
                        f"sources.{name}.routes.{index}.channel: no channel named "
                        f"{route.channel!r} (channels: {known})"
                    )
        return self

    def channel_url(self, name: str) -> str:
        """The Contacts API base URL for a channel."""
        return self.channels[name].base_url or self.contacts_api.base_url

    def resolve_secrets(self, env: Mapping[str, str] | None = None) -> AppConfig:
        """Return a copy with every ``*_env`` secret read from the environment."""
        env = os.environ if env is None else env
        channels = {
            name: channel.model_copy(
                update={
                    "token": _resolve_secret(
                        channel.token, channel.token_env, env, f"channels.{name}.token"
                    ),
                }
            )
            for name, channel in self.channels.items()
        }
        sources = {
            name: source.model_copy(
                update={
                    "secret": _resolve_secret(
                        source.secret, source.secret_env, env, f"sources.{name}.secret"
                    ),
                }
            )
            for name, source in self.sources.items()
        }
        admin = self.admin.model_copy(
            update={
                "token": _resolve_secret(
                    self.admin.token, self.admin.token_env, env, "admin.token"
                ),
            }
        )
        return self.model_copy(update={"channels": channels, "sources": sources, "admin": admin})

    def missing_secrets(self) -> list[str]:
        """What is still unset after :meth:`resolve_secrets`, named as the file names it."""

        def describe(key: str, env_name: str | None) -> str:
            if env_name:
                return f"{key}_env (environment variable {env_name} is not set)"
            return key

        missing = [
            describe(f"channels.{n}.token", c.token_env)
            for n, c in self.channels.items()
            if c.token is None
        ]
        missing += [
            describe(f"sources.{n}.secret", s.secret_env)
            for n, s in self.sources.items()
            if s.secret is None
        ]
        return missing


def _describe(error: PydanticValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {message}" if key else message)
    return "; ".join(lines)


def parse_config(data: Any, *, origin: str = "config") -> AppConfig:
    """Validate an already-loaded YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping")
    try:
        return AppConfig.model_validate(data)
    except PydanticValidationError as error:
        raise ConfigError(f"{origin}: {_describe(error)}") from None


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, require_secrets: bool = True
) -> AppConfig:
    """Read, validate and resolve a YAML config file.

    With ``require_secrets``, every channel token and source secret must be known.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    config = parse_config(data, origin=str(path))
    try:
        config = config.resolve_secrets(env)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    if require_secrets:
        missing = config.missing_secrets()
        if missing:
            raise ConfigError(f"{path}: no secret set for {', '.join(missing)}")
    return config


class Settings(BaseSettings):
    """Process settings from ``CONTACTSYNC_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CONTACTSYNC_", extra="ignore")

    config: Path | None = None
    data_dir: Path = Path(".contactsync")
    database_url: str | None = None
    broker_url: str | None = None
    api_base_url: str | None = None
    """Points every channel at this Contacts API URL (``up --sandbox`` sets it)."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    trust_proxy_hops: int = 0
    """Proxies in front of the receiver whose X-Forwarded-* headers are believed (so that
    signatures over the URL, like HubSpot's, see the URL the sender called)."""

    def ledger_url(self) -> str:
        """The ledger's SQLAlchemy URL: the configured one, else SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"

    def broker(self) -> str:
        """The Celery broker URL: the configured one, else the embedded one."""
        return self.broker_url or "contactsync-fs://"

    def load(self, *, require_secrets: bool = True) -> AppConfig:
        """The YAML config this process runs with (with ``api_base_url`` applied)."""
        if self.config is None:
            raise ConfigError("no config file: pass --config or set CONTACTSYNC_CONFIG")
        config = load_config(self.config, require_secrets=require_secrets)
        if self.api_base_url:
            config = config.model_copy(
                update={
                    "contacts_api": config.contacts_api.model_copy(
                        update={"base_url": self.api_base_url}
                    ),
                    "channels": {
                        name: channel.model_copy(update={"base_url": None})
                        for name, channel in config.channels.items()
                    },
                }
            )
        return config
