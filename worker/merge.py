"""Merging a contact's pending commands into the fewest calls. Pure.

A contact's open commands are applied in their sequence order; when several are waiting,
their net effect is applied in one pass: fields merged (the later value wins), each tag's
last operation kept (a tag added then removed is a removal, and costs nothing when the
contact is known not to have it), and an upsert's fields and tags sent with the fewest
calls the API allows.

A group never mixes a missing contact's fate: a group that starts with an upsert may create
the contact; a group that starts with a tag or untag stops before the next upsert, so that
"no such contact" belongs only to commands that came before the contact existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.contacts_api import limits

MAX_GROUP = 50
"""Commands merged into one pass at most."""


@dataclass
class Plan:
    """The net effect of a group of commands on one contact."""

    fields: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, bool] = field(default_factory=dict)
    """Tag -> True to add, False to remove (the last operation on it wins)."""
    may_create: bool = False

    @property
    def adds(self) -> list[str]:
        """Tags to add, in the order they were last asked for."""
        return [tag for tag, add in self.tags.items() if add]

    @property
    def removes(self) -> list[str]:
        """Tags to remove."""
        return [tag for tag, add in self.tags.items() if not add]

    def without(self, later: Iterable[tuple[str, Mapping[str, Any]]]) -> Plan:
        """This plan minus what later, already applied commands set (a replay of an old
        command must not undo newer changes)."""
        fields = dict(self.fields)
        tags = dict(self.tags)
        for _kind, payload in later:
            for name in payload.get("fields") or {}:
                fields.pop(name, None)
            for tag in payload.get("tags") or []:
                tags.pop(tag, None)
        return Plan(fields, tags, self.may_create)


def mergeable(kinds: Sequence[str]) -> int:
    """How many of a contact's waiting commands (head first) go in one pass."""
    if not kinds:
        return 0
    count = 1
    starts_with_upsert = kinds[0] == "upsert"
    for kind in kinds[1:MAX_GROUP]:
        if kind == "upsert" and not starts_with_upsert:
            break
        count += 1
    return count


def plan(commands: Iterable[tuple[str, Mapping[str, Any]]]) -> Plan:
    """The net effect of ``(kind, payload)`` commands applied in order."""
    result = Plan()
    for kind, payload in commands:
        if kind == "upsert":
            result.may_create = True
            result.fields.update(payload.get("fields") or {})
        add = kind != "untag"
        for tag in payload.get("tags") or []:
            result.tags.pop(tag, None)  # re-insert: order follows the last operation
            result.tags[tag] = add
    return result


def plan_group(
    group: Sequence[tuple[int, str, Mapping[str, Any]]],
    done_later: Sequence[tuple[int, str, Mapping[str, Any]]] = (),
) -> Plan:
    """The net effect of ``(seq, kind, payload)`` commands, each minus what commands
    already done after it changed (a replayed command must not undo newer changes)."""
    result = Plan()
    for seq, kind, payload in group:
        step = plan([(kind, payload)])
        if done_later:
            step = step.without((k, p) for s, k, p in done_later if s > seq)
        result.may_create = result.may_create or step.may_create
        result.fields.update(step.fields)
        for tag, add in step.tags.items():
            result.tags.pop(tag, None)
            result.tags[tag] = add
    return result


def trim_to_known(plan_: Plan, current_tags: Iterable[str] | None) -> Plan:
    """Drop tag operations that would change nothing, when the contact's tags are known."""
    if current_tags is None:
        return plan_
    have = set(current_tags)
    tags = {tag: add for tag, add in plan_.tags.items() if add != (tag in have)}
    return Plan(dict(plan_.fields), tags, plan_.may_create)


def calls_needed(plan_: Plan, *, lookup: bool, creating: bool = False, match: int = 0) -> int:
    """The calls a plan takes: a lookup, the field writes, the tag adds and removes."""
    fields = len(plan_.fields) + (match if creating else 0)
    return (
        int(lookup)
        + (limits.calls_for_fields(fields) if fields else 0)
        + limits.calls_for_tags(len(plan_.adds))
        + limits.calls_for_tags(len(plan_.removes))
    )
