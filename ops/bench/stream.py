"""A seeded stream of canonical events with bursts, and the final state it should leave.

:func:`generate` makes ``events`` events over ``contacts`` contacts, every one addressed by
``match: {"email": ...}``, in *episodes*: one contact gets a burst of 1 to 5 events within
about a second (a CRM saving a record several times, a form followed by its workflow).
Episodes of different contacts overlap in time, so bursts interleave. A tenth of the
contacts are hot: they get about a third of the repeat episodes. The mix:

- ``contact.upsert`` setting one to three of ``firstName``, ``lastName``, ``customerid`` to
  a new value (so the last write must win), sometimes with a tag;
- ``contact.tag`` of one or two tags;
- ``contact.untag`` of a tag, mostly one the contact has, often right after it was added
  in the same burst (tag then untag), sometimes one it never had.

A contact's first event is always an upsert, so the contact exists once events are applied
in order (a tag of a contact that does not exist is refused, docs/events.md).

:func:`expected_state` is the model: apply the events in order to an empty platform and
return each contact's fields and tags. It is pure and knows nothing of either implementation.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = ("firstName", "lastName", "customerid")
"""The fields the stream sets, besides ``email`` (the match field, set on creation)."""
TAGS = ("lead", "customer", "vip", "newsletter", "churn-risk", "trial", "webinar", "b2b")
FIRST = ("Ann", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ida", "Jo", "Kai", "Lu")
LAST = ("Ames", "Berg", "Cruz", "Diaz", "Egan", "Ford", "Gray", "Hale", "Iver", "Jett")
CHANNEL = "main"


@dataclass(frozen=True)
class Timed:
    """An event and when it happens, in seconds from the start of the stream."""

    at: float
    event: dict[str, Any]


def email(index: int) -> str:
    """The address of contact number ``index``."""
    return f"c{index:05d}@bench.example"


def generate(
    events: int,
    contacts: int,
    *,
    seed: int = 1,
    rate: float = 20.0,
    run: str = "bench",
) -> list[Timed]:
    """``events`` events over ``contacts`` contacts, sorted by time, ``rate`` a second on
    average; event ids are ``{run}-{n}`` (n in stream order)."""
    if events < 1 or contacts < 1 or rate <= 0:
        raise ValueError("events, contacts and rate must be positive")
    rng = random.Random(seed)
    hot = max(1, contacts // 10)  # a tenth of the contacts draw a third of the episodes
    tags_of: dict[int, set[str]] = {}  # what the contact has, as far as the generator knows
    drafts: list[tuple[float, int, dict[str, Any]]] = []
    order = list(range(contacts))
    rng.shuffle(order)
    # Every contact appears (if there are events enough), new ones spread over the stream.
    clock = 0.0
    made = 0
    while made < events:
        clock += rng.expovariate(rate / 3.0)  # an episode is three events on average
        episodes_left = max(1.0, (events - made) / 3.0)
        if order and (rng.random() < len(order) / episodes_left or not tags_of):
            contact = order.pop()
        elif rng.random() < 1 / 3:
            contact = rng.randrange(hot)
        else:
            contact = rng.choice(sorted(tags_of))
        size = min(events - made, rng.choice((1, 1, 2, 3, 3, 4, 5)))
        at = clock
        for position in range(size):
            if position:
                at += rng.uniform(0.05, 0.3)  # a burst: the whole episode within ~1 s
            event = _event(rng, contact, tags_of, first=contact not in tags_of)
            drafts.append((at, made, event))
            made += 1
    drafts.sort(key=lambda draft: (draft[0], draft[1]))
    return [
        Timed(round(at, 3), {"id": f"{run}-{n}", **event})
        for n, (at, _, event) in enumerate(drafts)
    ]


def _event(
    rng: random.Random, contact: int, tags_of: dict[int, set[str]], *, first: bool
) -> dict[str, Any]:
    base: dict[str, Any] = {"channel": CHANNEL, "match": {"email": email(contact)}}
    have = tags_of.setdefault(contact, set())
    roll = rng.random()
    if first or roll < 0.45:
        chosen = rng.sample(FIELDS, rng.randint(1, 3)) if not first else list(FIELDS)
        fields = {name: _value(rng, name) for name in FIELDS if name in chosen}
        event = {"type": "contact.upsert", **base, "fields": fields}
        if rng.random() < 0.25:
            tag = rng.choice(TAGS)
            event["tags"] = [tag]
            have.add(tag)
        return event
    if roll < 0.75 or not have:
        tags = rng.sample(TAGS, rng.choice((1, 1, 2)))
        have.update(tags)
        return {"type": "contact.tag", **base, "tags": tags}
    if rng.random() < 0.85:
        tag = rng.choice(sorted(have))
        have.discard(tag)
    else:
        tag = rng.choice(TAGS)  # possibly one it never had: a no-op
        have.discard(tag)
    return {"type": "contact.untag", **base, "tags": [tag]}


def _value(rng: random.Random, name: str) -> str:
    if name == "firstName":
        return rng.choice(FIRST)
    if name == "lastName":
        return rng.choice(LAST)
    return str(rng.randrange(1, 10_000))


State = dict[str, tuple[dict[str, str], frozenset[str]]]


def expected_state(events: Iterable[Mapping[str, Any]]) -> State:
    """``{email: (fields, tags)}`` after applying ``events`` in order to an empty platform.

    An upsert creates a missing contact with its match field and fields and adds its tags;
    tag and untag of a missing contact change nothing (the product refuses them); untag of a
    tag the contact lacks changes nothing.
    """
    fields_of: dict[str, dict[str, str]] = {}
    tags_of: dict[str, set[str]] = {}
    for event in events:
        (match_field, match_value), *_ = event["match"].items()
        key = str(match_value)
        kind = event["type"]
        if kind == "contact.upsert":
            if key not in fields_of:
                fields_of[key] = {match_field: key}
                tags_of[key] = set()
            fields_of[key].update({k: str(v) for k, v in (event.get("fields") or {}).items()})
            tags_of[key].update(event.get("tags") or ())
        elif key not in fields_of:
            continue
        elif kind == "contact.tag":
            tags_of[key].update(event["tags"])
        elif kind == "contact.untag":
            tags_of[key].difference_update(event["tags"])
        else:
            raise ValueError(f"unknown event type {kind!r}")
    return {key: (fields_of[key], frozenset(tags_of[key])) for key in fields_of}


def describe(stream: list[Timed]) -> dict[str, Any]:
    """Counts that say what a stream is made of."""
    kinds: dict[str, int] = {}
    per_contact: dict[str, list[float]] = {}
    for timed in stream:
        kinds[timed.event["type"]] = kinds.get(timed.event["type"], 0) + 1
        per_contact.setdefault(timed.event["match"]["email"], []).append(timed.at)
    within_1s = sum(
        1
        for times in per_contact.values()
        for earlier, later in itertools.pairwise(times)
        if later - earlier < 1.0
    )
    return {
        "events": len(stream),
        "contacts": len(per_contact),
        "types": dict(sorted(kinds.items())),
        "duration_s": round(stream[-1].at - stream[0].at, 1) if stream else 0.0,
        "follow_within_1s": within_1s,
        "max_events_per_contact": max((len(t) for t in per_contact.values()), default=0),
    }
