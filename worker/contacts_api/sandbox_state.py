"""The Contacts API sandbox's in-memory state: channels, contacts, rate windows, call log, faults.

Owns what the sandbox remembers and the arithmetic of its rate limit (a true sliding window
over the timestamps of accepted calls). Every method is thread-safe: the sandbox is served by
a threaded server. It knows nothing of HTTP; :mod:`worker.contacts_api.sandbox` does.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, NamedTuple

from worker.contacts_api import limits

DEFAULT_RATE: tuple[int, float] = (200, 60.0)
"""The documented limit: 200 calls per minute, per token."""

FIRST_CONTACT_ID = 1776025372480910
"""Ids are numeric strings counted up from here, unique across channels and resets."""


class Keep(Enum):
    """Marks a setting to leave as it is."""

    KEEP = "keep"


@dataclass(frozen=True)
class SandboxChannel:
    """One channel of the sandbox: the token that names it, its platform and limits."""

    token: str = field(repr=False)
    name: str
    platform: str = "whatsapp"
    custom_fields: frozenset[str] | None = None
    """The channel's custom field keys; ``None`` accepts any well-formed key."""
    rate_limit: tuple[int, float] = DEFAULT_RATE
    """``(calls, period_s)``: at most ``calls`` accepted calls in any ``period_s`` window."""

    def writable(self, name: str) -> bool:
        """Whether the API lets a caller write the field ``name`` on this channel."""
        if name in limits.STANDARD_FIELDS:
            return True
        if name in limits.READ_ONLY_FIELDS or not limits.CUSTOM_FIELD_KEY.match(name):
            return False
        return self.custom_fields is None or name in self.custom_fields


@dataclass(frozen=True)
class Faults:
    """Faults the sandbox injects into API answers; all off by default."""

    latency_ms: float = 0.0
    """Added before every API answer."""
    error_rate: float = 0.0
    """Share of admitted calls answered 500, 502 or 503."""
    rate_limit_rate: float = 0.0
    """Share of authenticated calls refused with a forced 429 (not counted as calls)."""
    hang_s: float = 30.0
    """How long a hanging call sleeps before it answers."""
    hang_rate: float = 0.0
    """Share of admitted calls that hang for ``hang_s``."""
    retry_after: bool = True
    """Whether 429 answers carry ``Retry-After``."""

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ``ValueError`` names any bad key or value."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "retry_after":
                if not isinstance(value, bool):
                    raise ValueError("retry_after must be true or false")
                clean[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0")
            if key.endswith("_rate") and value > 1:
                raise ValueError(f"{key} must be between 0 and 1")
            clean[key] = float(value)
        return replace(self, **clean)


@dataclass(frozen=True)
class CallRecord:
    """One accepted call, as the sandbox answered it."""

    at: float
    """Monotonic seconds when the call was admitted."""
    method: str
    path: str
    query: str
    status: int
    body: Any
    """The request body: parsed JSON, else the raw text, else ``None``."""

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON."""
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "body": self.body,
        }


@dataclass
class StoredContact:
    """A contact as the sandbox keeps it."""

    id: str
    custom_fields: dict[str, Any]
    tags: list[str]
    created_at: int

    def to_json(self) -> dict[str, Any]:
        """The contact object of the wire format."""
        return {
            "id": self.id,
            "custom_fields": dict(self.custom_fields),
            "tags": list(self.tags),
            "created_at": self.created_at,
        }


class Admission(NamedTuple):
    """The limiter's answer: admitted at ``at`` when ``wait_s`` is ``None``."""

    at: float
    wait_s: float | None
    """Seconds until the oldest call leaves the full window; ``None`` when admitted."""


def max_in_window(times: Sequence[float], period_s: float) -> int:
    """The largest number of ``times`` (sorted) that fall in any window ``[t, t + period_s)``."""
    best = start = 0
    for end, at in enumerate(times):
        while at - times[start] >= period_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class SlidingWindow:
    """A true sliding-window limit: ``calls`` accepted calls in any ``period_s`` seconds."""

    def __init__(self, calls: int, period_s: float) -> None:
        if calls < 1 or period_s <= 0:
            raise ValueError("a rate limit needs calls >= 1 and period_s > 0")
        self.calls = calls
        self.period_s = period_s
        self._accepted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Admit a call at ``now`` (``None``), or return the seconds until a slot frees."""
        while self._accepted and now - self._accepted[0] >= self.period_s:
            self._accepted.popleft()
        if len(self._accepted) < self.calls:
            self._accepted.append(now)
            return None
        return self._accepted[0] + self.period_s - now


@dataclass
class ChannelState:
    """What the sandbox holds for one channel."""

    channel: SandboxChannel
    window: SlidingWindow
    contacts: dict[str, StoredContact] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)


class SandboxState:
    """Every channel's contacts, limiter and call log, the faults, and a seeded random source.

    :meth:`reset` returns to the state it was built with: the configured channels, tokens,
    limits and faults, no contacts, an empty log.
    """

    def __init__(
        self,
        channels: Iterable[SandboxChannel],
        *,
        rate_limit: tuple[int, float] | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._initial_channels = tuple(channels)
        self._initial_rate = rate_limit
        self._initial_faults = faults or Faults()
        self._seed = seed
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._ids = itertools.count(FIRST_CONTACT_ID)
        self.generation = 0
        """Bumped by :meth:`reset`; calls begun before a reset are not logged after it."""
        self._channels: dict[str, ChannelState] = {}
        self._tokens: dict[str, str] = {}
        self._wake = threading.Event()
        self.faults = self._initial_faults
        self.unauthenticated = 0
        self._random = random.Random(seed)
        self.reset()

    # -- set-up -------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the configured channels and faults, with no contacts and an empty log."""
        with self._lock:
            self.generation += 1
            self._wake.set()  # release calls sleeping in a hang or latency fault
            self._wake = threading.Event()
            self._channels = {}
            self._tokens = {}
            for channel in self._initial_channels:
                if self._initial_rate is not None:
                    channel = replace(channel, rate_limit=self._initial_rate)
                self._install(channel)
            self.faults = self._initial_faults
            self.unauthenticated = 0
            self._random = random.Random(self._seed)

    def _install(self, channel: SandboxChannel) -> None:
        if channel.token in self._tokens and self._tokens[channel.token] != channel.name:
            raise ValueError(f"channel {channel.name!r}: its token is used by another channel")
        old = self._channels.get(channel.name)
        if old is not None:
            del self._tokens[old.channel.token]
        window = SlidingWindow(*channel.rate_limit)
        if old is None:
            self._channels[channel.name] = ChannelState(channel, window)
        else:
            old.channel, old.window = channel, window
        self._tokens[channel.token] = channel.name

    def set_channel(
        self,
        name: str,
        token: str,
        *,
        platform: str | None = None,
        custom_fields: frozenset[str] | Keep | None = Keep.KEEP,
    ) -> None:
        """Add a channel, or give an existing one a new token (the old one stops working).

        ``platform`` and ``custom_fields`` change only when given.
        """
        with self._lock:
            old = self._channels.get(name)
            base = old.channel if old else SandboxChannel(token=token, name=name)
            channel = replace(base, token=token, platform=platform or base.platform)
            if not isinstance(custom_fields, Keep):
                channel = replace(channel, custom_fields=custom_fields)
            self._install(channel)

    def set_rate(self, calls: int, period_s: float, *, channel: str | None = None) -> None:
        """Change the limit of one channel, or of every channel; their windows start empty."""
        with self._lock:
            names = [channel] if channel is not None else list(self._channels)
            for name in names:
                state = self._channel(name)
                state.channel = replace(state.channel, rate_limit=(calls, float(period_s)))
                state.window = SlidingWindow(calls, float(period_s))

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fault settings; returns the faults now in force."""
        with self._lock:
            self.faults = self.faults.updated(changes)
            return self.faults

    # -- admission ----------------------------------------------------------------------

    def channel_for_token(self, token: str) -> SandboxChannel | None:
        """The channel a token names, if any."""
        with self._lock:
            name = self._tokens.get(token)
            return self._channels[name].channel if name is not None else None

    def admit(self, name: str) -> Admission:
        """Try to admit a call on channel ``name`` under its sliding window."""
        with self._lock:
            now = self._clock()
            return Admission(at=now, wait_s=self._channel(name).window.admit(now))

    def note_unauthenticated(self) -> None:
        """Count a call refused 401."""
        with self._lock:
            self.unauthenticated += 1

    def note_refused(self, name: str, status: int) -> None:
        """Count a call refused before admission (429)."""
        with self._lock:
            self._channel(name).refused[status] += 1

    def record_call(self, name: str, generation: int, record: CallRecord) -> None:
        """Log an accepted call, unless the sandbox was reset while it ran."""
        with self._lock:
            if generation == self.generation and name in self._channels:
                self._channels[name].calls.append(record)

    def chance(self, rate: float) -> bool:
        """True with probability ``rate``, from the seeded random source."""
        if rate <= 0:
            return False
        with self._lock:
            return self._random.random() < rate

    def pick(self, options: Sequence[Any]) -> Any:
        """One of ``options``, from the seeded random source."""
        with self._lock:
            return self._random.choice(options)

    def sleep(self, seconds: float) -> bool:
        """Sleep; returns True when a reset or stop cut the sleep short."""
        with self._lock:
            wake = self._wake
        return wake.wait(seconds) if seconds > 0 else False

    def stop(self) -> None:
        """Release every sleeping call (the server is stopping)."""
        with self._lock:
            self._wake.set()

    # -- contacts -----------------------------------------------------------------------

    def create_contact(
        self, name: str, fields: Mapping[str, Any], tags: Sequence[str] = ()
    ) -> StoredContact:
        """Store a new contact on channel ``name``."""
        with self._lock:
            contact = StoredContact(
                id=str(next(self._ids)),
                custom_fields=dict(fields),
                tags=list(dict.fromkeys(tags)),
                created_at=int(self._wall_clock()),
            )
            self._channel(name).contacts[contact.id] = contact
            return contact

    def contact(self, name: str, contact_id: str) -> StoredContact | None:
        """The contact, or ``None``."""
        with self._lock:
            return self._channel(name).contacts.get(contact_id)

    def delete_contact(self, name: str, contact_id: str) -> bool:
        """Remove a contact, as a user deleting it in the platform's inbox would (the API
        itself cannot delete); False when there was none."""
        with self._lock:
            return self._channel(name).contacts.pop(contact_id, None) is not None

    def update_contact(self, name: str, contact_id: str, fields: Mapping[str, Any]) -> bool:
        """Write fields on a contact; False when there is no such contact."""
        with self._lock:
            contact = self._channel(name).contacts.get(contact_id)
            if contact is not None:
                contact.custom_fields.update(fields)
            return contact is not None

    def add_tags(self, name: str, contact_id: str, tags: Sequence[str]) -> bool:
        """Add tags in order of first addition, present ones left alone; False: no contact."""
        with self._lock:
            contact = self._channel(name).contacts.get(contact_id)
            if contact is not None:
                contact.tags = list(dict.fromkeys([*contact.tags, *tags]))
            return contact is not None

    def remove_tags(self, name: str, contact_id: str, tags: Sequence[str]) -> bool:
        """Remove tags, absent ones ignored; False when there is no such contact."""
        with self._lock:
            contact = self._channel(name).contacts.get(contact_id)
            if contact is not None:
                gone = set(tags)
                contact.tags = [tag for tag in contact.tags if tag not in gone]
            return contact is not None

    def find(self, name: str, field_name: str, value: str) -> list[StoredContact]:
        """Contacts whose ``field_name``, rendered as on the wire, equals ``value``."""
        with self._lock:
            return [
                contact
                for contact in self._channel(name).contacts.values()
                if field_name in contact.custom_fields
                and limits.wire_value(contact.custom_fields[field_name]) == value
            ]

    # -- what happened ------------------------------------------------------------------

    def channel_names(self) -> list[str]:
        """The names of the channels, in order of installation."""
        with self._lock:
            return list(self._channels)

    def channel(self, name: str) -> SandboxChannel:
        """A channel's current settings; ``KeyError`` when there is none."""
        with self._lock:
            return self._channel(name).channel

    def contacts(self, name: str) -> list[dict[str, Any]]:
        """Every contact of a channel, as wire objects, in creation order."""
        with self._lock:
            return [contact.to_json() for contact in self._channel(name).contacts.values()]

    def calls(self, name: str) -> list[CallRecord]:
        """The accepted calls of a channel, in order."""
        with self._lock:
            return list(self._channel(name).calls)

    def accepted_times(self, name: str) -> list[float]:
        """When each accepted call of a channel was admitted (monotonic seconds), sorted."""
        with self._lock:
            return sorted(call.at for call in self._channel(name).calls)

    def max_in_window(self, name: str) -> int:
        """The most accepted calls of a channel in any window of its limit's length."""
        with self._lock:
            state = self._channel(name)
            return max_in_window(sorted(c.at for c in state.calls), state.window.period_s)

    def log(self) -> dict[str, Any]:
        """Per channel: accepted calls, answers by status, refusals by status, max in window."""
        with self._lock:
            channels = {}
            for name, state in self._channels.items():
                calls, period_s = state.channel.rate_limit
                statuses = Counter(str(call.status) for call in state.calls)
                channels[name] = {
                    "platform": state.channel.platform,
                    "limit": {"calls": calls, "period_s": period_s},
                    "accepted": len(state.calls),
                    "statuses": dict(sorted(statuses.items())),
                    "refused": {str(code): n for code, n in sorted(state.refused.items())},
                    "max_in_window": self.max_in_window(name),
                }
            return {"channels": channels, "unauthenticated": self.unauthenticated}

    def _channel(self, name: str) -> ChannelState:
        try:
            return self._channels[name]
        except KeyError:
            raise KeyError(f"no sandbox channel named {name!r}") from None
