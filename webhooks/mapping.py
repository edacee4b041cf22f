"""From a source's records to commands, by the source's configuration. Pure.

Every source shares this: a record's keys are mapped to contact fields (the kind's
defaults, overridden by the config), the configured match field names the contact, static
tags and tags taken from record keys are added, and the first route whose conditions hold
picks the channel. A record that yields no match value is refused naming what is missing,
never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhooks.sources.base import InvalidRecord, Record
from worker.commands import Command, CommandError, ContactRef, make_command
from worker.config import RouteRule, SourceConfig
from worker.contacts_api import limits


@dataclass(frozen=True)
class SourceMapping:
    """A source's mapping, resolved against its kind's defaults."""

    fields: Mapping[str, str]
    match: str
    tags: tuple[str, ...]
    tags_from: tuple[str, ...]
    routes: tuple[RouteRule, ...]
    channel: str | None

    @classmethod
    def build(
        cls,
        config: SourceConfig,
        *,
        default_fields: Mapping[str, str],
        default_match: str,
        where: str,
    ) -> SourceMapping:
        """Combine the kind's defaults with the config; ``where`` names the config key."""
        fields = dict(default_fields)
        for key, target in config.fields.items():
            if target is None:
                fields.pop(key, None)
            else:
                fields[key] = target
        bad = limits.invalid_field_names(fields.values())
        if bad:
            raise ValueError(f"{where}.fields: {bad[0]!r} is not a writable contact field")
        match = config.match or default_match
        if match not in fields.values():
            raise ValueError(
                f"{where}.match: no record key maps to {match!r}; map one in {where}.fields"
            )
        return cls(
            fields=fields,
            match=match,
            tags=tuple(config.tags),
            tags_from=tuple(config.tags_from),
            routes=tuple(config.routes),
            channel=config.channel,
        )

    def channel_for(self, values: Mapping[str, Any]) -> str | None:
        """The first matching route's channel, else the source's."""
        for route in self.routes:
            if all(limits.wire_value(values.get(k)) == v for k, v in route.when.items()):
                return route.channel
        return self.channel


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _tags_from(values: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    tags = []
    for key in keys:
        value = values.get(key)
        if _present(value):
            tags += [part.strip() for part in str(value).split(",") if part.strip()]
    return tags


def to_commands(
    record: Record,
    mapping: SourceMapping,
    channels: Mapping[str, frozenset[str] | None],
    *,
    where: str,
) -> list[Command]:
    """The command a record asks for; ``where`` prefixes error fields (``[3]``)."""
    values = record.values
    fields = {
        target: values[key]
        for key, target in mapping.fields.items()
        if key in values and _present(values[key])
    }
    match_value = fields.get(mapping.match)
    if match_value is None:
        sources = [key for key, target in mapping.fields.items() if target == mapping.match]
        raise InvalidRecord(
            f"no value for the match field {mapping.match!r} (from {', '.join(sources)})",
            field=f"{where}{sources[0]}",
        )
    channel = mapping.channel_for(values)
    if channel is None or channel not in channels:
        raise InvalidRecord("no channel for this record: set the source's channel", field=where)
    tags = [*mapping.tags, *record.tags, *_tags_from(values, mapping.tags_from)]
    try:
        contact = ContactRef(match_field=mapping.match, match_value=limits.wire_value(match_value))
        if record.action == "upsert":
            command = make_command(
                "upsert",
                channel,
                contact,
                fields=fields,
                tags=tags,
                custom_fields=channels[channel],
            )
        else:
            if not tags:
                raise InvalidRecord(
                    f"a {record.action} needs tags: configure the source's tags", field=where
                )
            command = make_command(
                record.action, channel, contact, tags=tags, custom_fields=channels[channel]
            )
    except CommandError as error:
        raise InvalidRecord(error.detail, field=f"{where}{error.field}") from None
    return [command]
