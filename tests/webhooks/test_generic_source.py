"""The generic source's event format (webhooks/sources/generic.py)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhooks.sources.generic import (
    EVENT_KEYS,
    MAX_BATCH,
    EventError,
    InboundEvent,
    MalformedBody,
    parse_events,
)

CHANNELS: dict[str, frozenset[str] | None] = {
    "main": None,
    "strict": frozenset({"customerid"}),
}


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "contact.upsert",
        "channel": "main",
        "match": {"email": "ann@example.com"},
        "fields": {"firstName": "Ann"},
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not OMIT}


OMIT: Any = object()


def parse(
    payload: Any,
    *,
    webhook_id: str = "msg_1",
    default_channel: str | None = None,
) -> list[InboundEvent]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_events(
        body,
        webhook_id=webhook_id,
        source="crm",
        default_channel=default_channel,
        channels=CHANNELS,
    )


def refusal(payload: Any, **kwargs: Any) -> EventError:
    with pytest.raises(EventError) as caught:
        parse(payload, **kwargs)
    return caught.value


# --- the three types ------------------------------------------------------------------


def test_the_documented_example_becomes_one_upsert() -> None:
    example = {
        "id": "evt-1",
        "type": "contact.upsert",
        "channel": "main",
        "match": {"email": "ann@example.com"},
        "fields": {"firstName": "Ann", "customerid": "42"},
        "tags": ["vip"],
    }
    (parsed,) = parse(example)
    assert parsed.key == "evt-1"
    assert parsed.source == "crm"
    assert parsed.type == "contact.upsert"
    assert parsed.raw == example
    (command,) = parsed.commands
    assert command.kind == "upsert"
    assert command.channel == "main"
    assert command.contact.match_field == "email"
    assert command.contact.match_value == "ann@example.com"
    assert dict(command.fields) == {"firstName": "Ann", "customerid": "42"}
    assert command.tags == ("vip",)


def test_an_upsert_may_carry_only_tags() -> None:
    (parsed,) = parse(event(fields=OMIT, tags=["a"]))
    assert parsed.commands[0].kind == "upsert"
    assert parsed.commands[0].tags == ("a",)


@pytest.mark.parametrize(
    ("event_type", "kind"), [("contact.tag", "tag"), ("contact.untag", "untag")]
)
def test_tag_and_untag_carry_tags_only(event_type: str, kind: str) -> None:
    (parsed,) = parse(event(type=event_type, fields=OMIT, tags=["vip", "vip", "new"]))
    (command,) = parsed.commands
    assert command.kind == kind
    assert command.tags == ("vip", "new")
    assert dict(command.fields) == {}


def test_a_tag_event_with_fields_is_refused() -> None:
    error = refusal(event(type="contact.tag", tags=["vip"]))
    assert error.field == "fields"


def test_a_tag_event_without_tags_is_refused() -> None:
    assert refusal(event(type="contact.untag", fields=OMIT)).field == "tags"


def test_an_empty_upsert_is_refused() -> None:
    assert refusal(event(fields={})).field == "fields"


@pytest.mark.parametrize("event_type", [OMIT, None, 3, "contact.delete", "upsert"], ids=repr)
def test_a_missing_or_unknown_type_is_refused(event_type: Any) -> None:
    error = refusal(event(type=event_type))
    assert error.field == "type"
    assert "contact.upsert" in error.detail


# --- naming the contact ---------------------------------------------------------------


def test_contact_id_as_a_string() -> None:
    (parsed,) = parse(event(match=OMIT, contact_id="c-9"))
    assert parsed.commands[0].contact.contact_id == "c-9"


def test_contact_id_as_an_integer_becomes_its_string() -> None:
    (parsed,) = parse(event(match=OMIT, contact_id=42))
    assert parsed.commands[0].contact.contact_id == "42"
    assert parsed.commands[0].contact.match_field is None


@pytest.mark.parametrize("contact_id", ["", "  ", True, None, 1.5, [], {}, "x" * 201], ids=repr)
def test_a_bad_contact_id_is_refused(contact_id: Any) -> None:
    assert refusal(event(match=OMIT, contact_id=contact_id)).field == "contact_id"


def test_match_and_contact_id_together_are_refused() -> None:
    assert refusal(event(contact_id="c-9")).field == "contact_id"


def test_neither_match_nor_contact_id_is_refused() -> None:
    error = refusal(event(match=OMIT))
    assert error.field == "match"
    assert "contact_id" in error.detail


@pytest.mark.parametrize(
    "match",
    [{}, {"email": "a@b.c", "phone": "+1"}, ["email", "a@b.c"], "a@b.c", None],
    ids=repr,
)
def test_match_must_be_one_field(match: Any) -> None:
    assert refusal(event(match=match)).field == "match"


@pytest.mark.parametrize("value", [None, "", "   ", [], {}, "x" * 4097], ids=repr)
def test_a_bad_match_value_is_refused(value: Any) -> None:
    assert refusal(event(match={"email": value})).field == "match.email"


@pytest.mark.parametrize("name", ["locale", "timezone", "9lives", "has space"])
def test_match_on_a_field_that_is_not_writable_is_refused(name: str) -> None:
    assert refusal(event(match={name: "x"})).field == f"match.{name}"


def test_match_on_a_custom_field_unknown_to_the_channel_is_refused() -> None:
    error = refusal(event(channel="strict", match={"hubspot_id": "7"}, fields={"customerid": "1"}))
    assert error.field == "match.hubspot_id"


@pytest.mark.parametrize(
    ("value", "wire"),
    [(True, "true"), (False, "false"), (42, "42"), (1.5, "1.5"), ("Ann", "Ann")],
    ids=repr,
)
def test_match_values_take_the_apis_string_form(value: Any, wire: str) -> None:
    (parsed,) = parse(event(match={"is_member": value}))
    assert parsed.commands[0].contact.match_value == wire
    assert parsed.commands[0].contact.match_value == wire


# --- channels -------------------------------------------------------------------------


def test_the_default_channel_applies_when_channel_is_left_out() -> None:
    (parsed,) = parse(event(channel=OMIT), default_channel="strict")
    assert parsed.commands[0].channel == "strict"


def test_an_explicit_channel_beats_the_default() -> None:
    (parsed,) = parse(event(channel="main"), default_channel="strict")
    assert parsed.commands[0].channel == "main"


def test_no_channel_and_no_default_is_refused() -> None:
    error = refusal(event(channel=OMIT))
    assert error.field == "channel"
    assert "default" in error.detail


@pytest.mark.parametrize("channel", ["nope", 3, None, ""], ids=repr)
def test_an_unknown_channel_is_refused(channel: Any) -> None:
    assert refusal(event(channel=channel), default_channel="main").field == "channel"


def test_a_channel_with_known_custom_fields_refuses_others() -> None:
    (parsed,) = parse(event(channel="strict", fields={"customerid": "1", "email": "a@b.c"}))
    assert dict(parsed.commands[0].fields) == {"customerid": "1", "email": "a@b.c"}
    assert refusal(event(channel="strict", fields={"plan": "gold"})).field == "fields.plan"


# --- fields, tags, and the other keys -------------------------------------------------


@pytest.mark.parametrize("name", ["locale", "gender", "bad-key"])
def test_a_field_that_cannot_be_written_is_named(name: str) -> None:
    assert refusal(event(fields={name: "x"})).field == f"fields.{name}"


@pytest.mark.parametrize("fields", [None, [], "firstName", [["firstName", "Ann"]]], ids=repr)
def test_fields_must_be_an_object(fields: Any) -> None:
    assert refusal(event(fields=fields)).field == "fields"


@pytest.mark.parametrize("value", [{"a": 1}, [1]], ids=repr)
def test_a_field_value_must_be_a_scalar(value: Any) -> None:
    assert refusal(event(fields={"firstName": value})).field == "fields.firstName"


@pytest.mark.parametrize("tags", [None, "vip", {"vip": True}], ids=repr)
def test_tags_must_be_an_array(tags: Any) -> None:
    assert refusal(event(tags=tags)).field == "tags"


def test_a_bad_tag_is_named_by_its_index() -> None:
    assert refusal(event(tags=["ok", ""])).field == "tags[1]"
    assert refusal([event(), event(tags=["ok", 5])]).field == "[1].tags[1]"


@pytest.mark.parametrize("name", ["firstName", "data", "Type", "timestamp"])
def test_an_unknown_top_level_key_is_refused_by_name(name: str) -> None:
    error = refusal(event(**{name: "x"}))
    assert error.field == name
    assert "allowed" in error.detail


def test_a_long_unknown_key_is_shortened_in_the_error() -> None:
    error = refusal(event(**{"k" * 10_000: 1}))
    assert len(error.field) < 100


@pytest.mark.parametrize(
    "occurred_at", ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.5+02:00", 1714557600, 1.7e9]
)
def test_occurred_at_is_accepted_and_kept(occurred_at: Any) -> None:
    (parsed,) = parse(event(occurred_at=occurred_at))
    assert parsed.raw["occurred_at"] == occurred_at


@pytest.mark.parametrize("occurred_at", ["yesterday", "", True, None, {}, "2024-13-01"], ids=repr)
def test_a_bad_occurred_at_is_refused(occurred_at: Any) -> None:
    assert refusal(event(occurred_at=occurred_at)).field == "occurred_at"


@pytest.mark.parametrize("event_id", ["", " ", 7, None, "x" * 201], ids=repr)
def test_a_bad_id_is_refused(event_id: Any) -> None:
    assert refusal(event(id=event_id)).field == "id"


# --- batches and keys -----------------------------------------------------------------


def test_a_single_event_without_id_is_keyed_by_the_webhook_id() -> None:
    (parsed,) = parse(event(), webhook_id="msg_abc")
    assert parsed.key == "msg_abc"


def test_batch_elements_are_keyed_by_id_else_webhook_id_and_index() -> None:
    parsed = parse([event(id="evt-a"), event(), event()], webhook_id="msg_abc")
    assert [item.key for item in parsed] == ["evt-a", "msg_abc:1", "msg_abc:2"]


def test_a_batch_of_one_uses_the_indexed_key() -> None:
    (parsed,) = parse([event()], webhook_id="msg_abc")
    assert parsed.key == "msg_abc:0"


def test_a_batch_of_100_is_accepted_in_order() -> None:
    parsed = parse([event(id=f"evt-{n}", tags=[f"t{n}"]) for n in range(MAX_BATCH)])
    assert len(parsed) == 100
    assert [item.commands[0].tags for item in parsed] == [(f"t{n}",) for n in range(100)]


def test_a_batch_of_101_is_refused() -> None:
    error = refusal([event() for _ in range(MAX_BATCH + 1)])
    assert error.field == "$"
    assert "101" in error.detail


def test_an_empty_batch_is_refused() -> None:
    assert refusal([]).field == "$"


@pytest.mark.parametrize("payload", ["text", 3, None, True], ids=repr)
def test_a_body_that_is_neither_object_nor_array_is_refused(payload: Any) -> None:
    assert refusal(payload).field == "$"


@pytest.mark.parametrize("element", [1, "x", None, [], [event()]], ids=repr)
def test_a_batch_element_that_is_not_an_object_is_named(element: Any) -> None:
    assert refusal([event(), event(), element]).field == "[2]"


def test_errors_in_a_batch_name_the_element() -> None:
    assert refusal([event(), event(), event(), event(match={"email": ""})]).field == (
        "[3].match.email"
    )
    assert refusal([event(), event(type="x")]).field == "[1].type"
    assert refusal([event(), event(fields={"locale": "x"})]).field == "[1].fields.locale"
    assert refusal([event(oops=1)]).field == "[0].oops"


def test_two_events_with_the_same_id_in_a_batch_are_refused() -> None:
    error = refusal([event(id="a"), event(id="b"), event(id="a")])
    assert error.field == "[2].id"


def test_an_id_that_collides_with_a_derived_key_is_refused() -> None:
    assert refusal([event(), event(id="msg_1:0")], webhook_id="msg_1").field == "[1].id"
    assert refusal([event(id="msg_1:1"), event()], webhook_id="msg_1").field == "[0].id"


@pytest.mark.parametrize("webhook_id", ["", "w" * 201])
def test_an_unusable_webhook_id_is_refused(webhook_id: str) -> None:
    assert refusal(event(), webhook_id=webhook_id).field == "webhook-id"


# --- bodies we do not read ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        json.dumps(event()).encode("utf-16"),
        b'{"type": NaN}',
        b'{"type": Infinity}',
        b'{"fields": {"firstName": 1e400}}',
        b'{"type": "contact.upsert", "type": "contact.tag"}',
        b'{"match": {"email": "\\ud800"}}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b'{"a": ' + b"1" * 5000 + b"}",  # beyond int's string conversion limit
    ],
    ids=lambda body: repr(body[:30]),
)
def test_a_body_that_is_not_plain_utf8_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse(body)


def test_a_malformed_body_error_does_not_repeat_the_body() -> None:
    with pytest.raises(MalformedBody) as caught:
        parse(b'{"secret-ish": ' + b"x" * 500)
    assert "xxxx" not in caught.value.detail


# --- properties -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from([*EVENT_KEYS, "email", "firstName", "x"]), inner, max_size=4
        )
    ),
    max_leaves=12,
)
plausible_events = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=5) | st.integers(),
        "type": st.sampled_from(["contact.upsert", "contact.tag", "contact.untag", "x"]),
        "channel": st.sampled_from(["main", "strict", "nope"]) | json_values,
        "match": st.dictionaries(
            st.sampled_from(["email", "customerid", "locale"]), json_values, max_size=2
        )
        | json_values,
        "contact_id": json_values,
        "fields": st.dictionaries(
            st.sampled_from(["firstName", "customerid", "locale", ""]), json_values
        )
        | json_values,
        "tags": st.lists(st.text(max_size=3) | json_scalars, max_size=3) | json_values,
        "occurred_at": json_values,
    },
)


@settings(max_examples=300)
@given(body=st.binary(max_size=300))
def test_no_byte_string_makes_the_parser_raise_anything_else(body: bytes) -> None:
    with contextlib.suppress(MalformedBody, EventError):
        parse(body, default_channel="main")


@settings(max_examples=500)
@given(payload=plausible_events | st.lists(plausible_events, max_size=4) | json_values)
def test_no_json_document_makes_the_parser_raise_anything_else(payload: Any) -> None:
    try:
        events = parse(json.dumps(payload).encode(), default_channel="main")
    except (MalformedBody, EventError):
        return
    assert events
    assert len({item.key for item in events}) == len(events)
    for item in events:
        assert len(item.commands) == 1
