"""The OpenAPI 3.1 description of the receiver's HTTP API, served at ``GET /openapi.json``.

One document for everything the receiver serves: ``POST /webhooks/{source}`` (the generic
source's canonical event format as the JSON body, the vendors' content types beside it,
the Standard Webhooks headers and every answer), the ``GET`` set-up probe, ``/healthz``,
``/readyz``, ``/metrics``, this document, and the admin API under ``/admin/api/`` (bearer
token). Every refusal shares one ``Error`` component. It is built here from
the same constants the code checks against (batch size, key lengths, page sizes, field
rules), so a limit changed there changes here. It describes; it validates nothing at run
time. ``tests/webhooks/test_openapi.py`` runs schemathesis against the app with it.

The document is the same whatever the config: source names, channel names and whether an
admin token is set are not disclosed (without a token, every admin path answers 404).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Response, jsonify

from webhooks.admin import MAX_PAGE
from webhooks.receiver import RETRY_AFTER_S
from webhooks.selection import MAX_IDS
from webhooks.signing import MAX_WEBHOOK_ID_CHARS
from webhooks.sources.base import MAX_RECORDS
from webhooks.sources.generic import EVENT_KEYS, EVENT_TYPES, MAX_BATCH, MAX_ID_CHARS
from worker.commands import MAX_FIELDS_PER_COMMAND, MAX_TAGS_PER_COMMAND, MAX_VALUE_CHARS
from worker.contacts_api import limits

__all__ = ["openapi_blueprint", "openapi_document"]

PATH = "/openapi.json"
MAX_FILTER_CHARS = 100
"""``selection.filter_from``: a channel, reason or source filter holds 1 to 100 characters."""
MAX_TAG_CHARS = 255
"""``worker.commands``: a tag holds at most 255 characters."""
MAX_COMMAND_ID = 2**63 - 1
"""Command ids are 64-bit integers in the ledger (SQLite and PostgreSQL alike)."""

Schema = dict[str, Any]

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"


def _ref(name: str) -> Schema:
    return {"$ref": _SCHEMAS + name}


def _response(name: str) -> Schema:
    return {"$ref": _RESPONSES + name}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str, *errors: str, headers: Schema | None = None) -> Schema:
    """A refusal: the common error body, ``error`` being one of ``errors``."""
    answer = _json(_ref("Error"), description + " `error`: " + ", ".join(f"`{e}`" for e in errors))
    if headers:
        answer["headers"] = headers
    return answer


# -- schemas -----------------------------------------------------------------------------------

_NON_BLANK = "[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""Holds a character that is not whitespace as Python's ``str.strip`` sees it (not ``\\S``)."""
_ISO_TIME = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"  # a date (days to 28: always real)
    r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"  # then a time
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?$"  # and an offset
)

_FIELD_NAME: Schema = {
    "type": "string",
    "description": (
        "A writable standard field (`"
        + "`, `".join(sorted(limits.STANDARD_FIELDS))
        + "`) or a custom field key: a letter or `_`, then up to 63 letters, digits or `_`. "
        "`"
        + "`, `".join(sorted(limits.READ_ONLY_FIELDS))
        + "` cannot be written. When the channel's config lists its `custom_fields`, only "
        "those keys are accepted (422 otherwise)."
    ),
    "pattern": limits.CUSTOM_FIELD_KEY.pattern,
    "not": {"enum": sorted(limits.READ_ONLY_FIELDS)},
}

_EVENT: Schema = {
    "type": "object",
    "title": "Event",
    "description": (
        "One canonical event (docs/events.md). Exactly one of `match` or `contact_id` names "
        "the contact. `contact.upsert` needs at least one field or tag; `contact.tag` and "
        "`contact.untag` carry `tags` (at least one) and no `fields`. Unknown keys are "
        "refused with 422, naming the key. Rules the document cannot express (a channel "
        "that is not configured, a custom field the channel does not declare) are also 422."
    ),
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_CHARS,
            "pattern": _NON_BLANK,
            "description": "Your id for the event: its idempotency key within the source.",
        },
        "type": {"enum": list(EVENT_TYPES)},
        "channel": {
            "type": "string",
            "minLength": 1,
            "description": "A channel named in the config; defaults to the source's `channel`.",
        },
        "match": {
            "type": "object",
            "description": "The contact whose field has this value: exactly one field.",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": _ref("FieldName"),
            "additionalProperties": _ref("MatchValue"),
        },
        "contact_id": {
            "description": "The contact's id in the messaging platform.",
            "oneOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_ID_CHARS,
                    "pattern": _NON_BLANK,
                },
                {"type": "integer", "description": f"At most {MAX_ID_CHARS} digits."},
            ],
        },
        "fields": {
            "type": "object",
            "description": "Field name to value; `null` clears the field.",
            "maxProperties": MAX_FIELDS_PER_COMMAND,
            "propertyNames": _ref("FieldName"),
            "additionalProperties": _ref("FieldValue"),
        },
        "tags": {
            "type": "array",
            "maxItems": MAX_TAGS_PER_COMMAND,
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TAG_CHARS,
                "pattern": _NON_BLANK,
            },
        },
        "occurred_at": {
            "description": "When it happened (kept, not used).",
            "oneOf": [
                {"type": "string", "maxLength": 64, "pattern": _ISO_TIME},
                {"type": "number"},
            ],
        },
    },
    "oneOf": [{"required": ["match"]}, {"required": ["contact_id"]}],
    "if": {"properties": {"type": {"const": "contact.upsert"}}},
    "then": {
        "anyOf": [
            {"required": ["fields"], "properties": {"fields": {"minProperties": 1}}},
            {"required": ["tags"], "properties": {"tags": {"minItems": 1}}},
        ]
    },
    "else": {
        "required": ["tags"],
        "properties": {"tags": {"minItems": 1}, "fields": {"maxProperties": 0}},
    },
}
assert set(_EVENT["properties"]) == EVENT_KEYS, "the Event schema must list every event key"

_DEAD_LETTER: Schema = {
    "type": "object",
    "description": "A dead letter: a command the worker gave up on (docs/dead-letters.md).",
    "required": [
        "id",
        "event_id",
        "source",
        "event_key",
        "event_type",
        "channel",
        "kind",
        "seq",
        "contact_key",
        "contact_id",
        "match_field",
        "match_value",
        "payload",
        "reason",
        "last_status",
        "last_error",
        "attempts",
        "created_at",
        "updated_at",
        "finished_at",
        "created_at_epoch",
        "updated_at_epoch",
        "finished_at_epoch",
    ],
    "properties": {
        "id": {"type": "integer", "description": "The command's id."},
        "event_id": {"type": "integer", "description": "The ledger's id of the event."},
        "source": {"type": "string"},
        "event_key": {"type": "string", "description": "The event's idempotency key."},
        "event_type": {"type": "string"},
        "channel": {"type": "string"},
        "kind": {"enum": ["upsert", "tag", "untag"]},
        "seq": {"type": "integer", "description": "Order of the command for its contact."},
        "contact_key": {"type": "string"},
        "contact_id": {"type": ["string", "null"]},
        "match_field": {"type": ["string", "null"]},
        "match_value": {"type": ["string", "null"]},
        "payload": {
            "type": "object",
            "properties": {
                "fields": {"type": "object", "additionalProperties": _ref("FieldValue")},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
        "reason": {
            "type": ["string", "null"],
            "description": "Why it died: `unauthorized`, `forbidden`, `no_such_contact`, "
            "`invalid`, `server_error`, `timeout`, `rate_limited_too_long`, ...",
        },
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "attempts": {"type": "integer", "minimum": 0},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at_epoch": {"type": "number"},
        "updated_at_epoch": {"type": "number"},
        "finished_at_epoch": {"type": ["number", "null"]},
    },
}

_SELECTION: Schema = {
    "description": (
        "Exactly one of `ids`, `all: true` or a non-empty `filter`. Anything else is 400 "
        "`invalid_parameter` naming the key."
    ),
    "oneOf": [
        {
            "type": "object",
            "title": "By ids",
            "required": ["ids"],
            "additionalProperties": False,
            "properties": {
                "ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_IDS,
                    "items": _ref("CommandId"),
                }
            },
        },
        {
            "type": "object",
            "title": "Every dead letter",
            "required": ["all"],
            "additionalProperties": False,
            "properties": {"all": {"const": True}},
        },
        {
            "type": "object",
            "title": "By filter",
            "required": ["filter"],
            "additionalProperties": False,
            "properties": {
                "filter": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "channel": _ref("FilterText"),
                        "reason": _ref("FilterText"),
                        "source": _ref("FilterText"),
                        "since": {"oneOf": [_ref("Since"), {"type": "number", "minimum": 0}]},
                    },
                }
            },
        },
    ],
}

_EVENT_RESULT: Schema = {
    "type": "object",
    "required": ["event_id", "commands", "duplicate"],
    "additionalProperties": False,
    "properties": {
        "event_id": {"type": "string", "description": "The event's idempotency key."},
        "commands": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "The ids of the commands the event became (none for a vendor "
            "event that changes nothing).",
        },
        "duplicate": {
            "type": "boolean",
            "description": "The key was already recorded: nothing new was done.",
        },
    },
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every refusal, from every endpoint, has this body.",
        "required": ["error", "detail"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "string",
                "description": "A stable, machine-readable reason (`invalid_signature`, ...).",
            },
            "detail": {"type": "string", "description": "What was wrong, for a person."},
            "field": {
                "type": "string",
                "description": "Where: the event's part (`[3].match.email`, `$` for the "
                "whole body, `webhook-id`) or the admin parameter (`limit`, `filter.since`).",
            },
        },
    },
    "FieldName": _FIELD_NAME,
    "FieldValue": {
        "description": "A field value: a string, number, boolean or `null`.",
        "type": ["string", "number", "boolean", "null"],
        "maxLength": MAX_VALUE_CHARS,
    },
    "MatchValue": {
        "description": "A non-empty string, a number or a boolean, compared in the platform's "
        "string form (`true`/`false`, `42`).",
        "oneOf": [
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_VALUE_CHARS,
                "pattern": _NON_BLANK,
            },
            {"type": "number"},
            {"type": "boolean"},
        ],
    },
    "Event": _EVENT,
    "EventBatch": {
        "type": "array",
        "description": f"1 to {MAX_BATCH} events, all or nothing; a refusal names the element "
        "as `[index]`. Two elements with the same key are refused.",
        "minItems": 1,
        "maxItems": MAX_BATCH,
        "items": _ref("Event"),
    },
    "EventResult": _EVENT_RESULT,
    "BatchResult": {
        "type": "object",
        "description": "The answer to a batch, and to every vendor delivery: one entry per "
        "event, in order.",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": _ref("EventResult")}},
    },
    "CommandId": {"type": "integer", "minimum": 1, "maximum": MAX_COMMAND_ID},
    "FilterText": {"type": "string", "minLength": 1, "maxLength": MAX_FILTER_CHARS},
    "Since": {
        "type": "string",
        "description": "`90s`, `15m`, `2h`, `3d` or `1w` ago; an ISO 8601 date or time (UTC "
        "unless it names an offset); or epoch seconds. Compared with when the command died. "
        "(The patterns are the common forms; Python's `datetime.fromisoformat` reads a few "
        "more.)",
        "anyOf": [
            {"title": "ago", "pattern": "^[0-9]+(\\.[0-9]+)? *[smhdwSMHDW]$"},
            {"title": "epoch seconds", "pattern": "^[0-9]{1,15}(\\.[0-9]{1,9})?$"},
            {"title": "ISO 8601", "pattern": _ISO_TIME},
        ],
        "examples": ["2h", "2024-06-01", "2024-06-01T12:00:00Z", "1717243200"],
    },
    "DeadLetter": _DEAD_LETTER,
    "DeadLetterPage": {
        "type": "object",
        "required": ["items", "total", "limit", "offset"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": _ref("DeadLetter")},
            "total": {"type": "integer", "minimum": 0, "description": "All that match."},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "offset": {"type": "integer", "minimum": 0},
        },
    },
    "Selection": _SELECTION,
    "Replayed": {
        "type": "object",
        "required": ["replayed", "ids", "published"],
        "additionalProperties": False,
        "properties": {
            "replayed": {"type": "integer", "minimum": 0},
            "ids": {"type": "array", "items": {"type": "integer"}},
            "published": {
                "type": "integer",
                "minimum": 0,
                "description": "Tasks published now; the reconciler publishes the rest.",
            },
        },
    },
    "Purged": {
        "type": "object",
        "required": ["purged"],
        "additionalProperties": False,
        "properties": {"purged": {"type": "integer", "minimum": 0}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": {
                "type": "object",
                "required": ["ledger", "broker"],
                "additionalProperties": False,
                "properties": {
                    "ledger": _ref("Check"),
                    "broker": _ref("Check"),
                },
            },
        },
    },
    "Check": {
        "type": "string",
        "description": "`ok`, or `failed: <ExceptionName>`.",
        "pattern": "^(ok|failed: .+)$",
    },
}

# -- shared responses and parameters -----------------------------------------------------------

RESPONSES: dict[str, Schema] = {
    "Unauthorized": _error(
        "No `Authorization: Bearer <token>` header, or not the admin token.",
        "unauthorized",
        headers={
            "WWW-Authenticate": {
                "description": '`Bearer realm="contactsync-admin"`, with '
                '`error="invalid_token"` when a token was given but is wrong.',
                "required": True,
                "schema": {"type": "string", "pattern": "^Bearer "},
            }
        },
    ),
    "AdminNotFound": _error(
        "Not served (the config has no admin token), or no such dead letter: no command "
        "with that id, or the command is not dead.",
        "not_found",
    ),
    "AdminInvalid": _error(
        "A parameter or body key is not valid; `field` names it (an unknown one included).",
        "invalid_parameter",
        "malformed_body",
    ),
    "TooLarge": _error(
        "The body is larger than the receiver accepts.", "too_large", "request_entity_too_large"
    ),
}

_WEBHOOK_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": False,
        "description": "Standard Webhooks (generic sources): the message id, the same on every "
        "retry; printable ASCII without spaces or `.`. With a single event and no `id`, it "
        f"is the event's key, so at most {MAX_ID_CHARS} characters there "
        f"({MAX_WEBHOOK_ID_CHARS} are verified).",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_CHARS,
            "pattern": "^[!-\\-/-~]+$",
        },
        "example": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": False,
        "description": "Standard Webhooks: integer Unix seconds of this attempt, within 5 "
        "minutes of the receiver's clock.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
        "example": "1717243200",
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": False,
        "description": "Standard Webhooks: space-separated `v1,<base64 HMAC-SHA256>` of "
        "`{webhook-id}.{webhook-timestamp}.{body}`; one match is enough.",
        "schema": {"type": "string", "pattern": "^v1,"},
        "example": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    },
]

_TOKEN = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "Vendor sources that cannot sign (Mailchimp, Jotform, HTML forms, "
    "Salesforce): the source's shared secret, when it travels in the URL. The parameter's "
    "name is the source's `token_param` option (`token` by default). Pipedrive sends HTTP "
    "Basic credentials instead; an HTML form may post the secret as a form field.",
    "schema": {"type": "string"},
}

_SOURCE = {
    "name": "source",
    "in": "path",
    "required": True,
    "description": "The source's name in the config (`sources.<name>`).",
    "schema": {"type": "string", "minLength": 1},
    "example": "shop",
}

_COMMAND_ID = {
    "name": "command_id",
    "in": "path",
    "required": True,
    "description": "The dead letter's (command's) id.",
    "schema": _ref("CommandId"),
    "example": 4182,
}

_ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
_ADMIN_TAGS = ["admin"]


def _list_parameters() -> list[Schema]:
    text = "Only dead letters whose {} is this (an empty value is ignored)."
    parameters: list[Schema] = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": text.format(name),
            "schema": {"type": "string", "maxLength": MAX_FILTER_CHARS},
        }
        for name in ("channel", "reason", "source")
    ]
    parameters += [
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "Only dead letters that died at or after this time (an empty "
            "value is ignored).",
            "schema": {"anyOf": [_ref("Since"), {"const": ""}]},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Page size.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
        },
        {
            "name": "offset",
            "in": "query",
            "required": False,
            "description": "How many to skip, newest first.",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_COMMAND_ID, "default": 0},
        },
    ]
    return parameters


# -- paths -------------------------------------------------------------------------------------


def _webhook_post() -> Schema:
    accepted = {"oneOf": [_ref("EventResult"), _ref("BatchResult")]}
    return {
        "operationId": "receiveWebhook",
        "tags": ["webhooks"],
        "summary": "Deliver events from a source",
        "description": (
            "Checks, in this order: the source exists (404), the body is not too large (413), "
            "the content type is one the source's kind takes (415), the signature or shared "
            "secret (401), the body is the format the source sends (400), every record can "
            "become a command (422). Only then are the events and their commands written to "
            "the ledger, in one transaction; 2xx means they are recorded. A refused request "
            "records nothing.\n\n"
            "A `generic` source takes the canonical JSON event (one object, or an array of 1 "
            f"to {MAX_BATCH}) signed with Standard Webhooks (the `webhook-*` headers). Vendor "
            "sources take what their vendor sends, verified as the vendor signs it "
            "(docs/sources/): JSON (HubSpot, Typeform, Tally, Pipedrive, Calendly, HTML "
            "forms via Apps Script), `application/x-www-form-urlencoded` (Mailchimp, "
            "Jotform, HTML forms), `multipart/form-data` (Jotform, HTML forms), "
            f"`text/xml` (Salesforce); at most {MAX_RECORDS} records per delivery."
        ),
        "parameters": [_SOURCE, _TOKEN, *_WEBHOOK_HEADERS],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {
                    "schema": {"oneOf": [_ref("Event"), _ref("EventBatch")]},
                    "example": {
                        "id": "order-1001-paid",
                        "type": "contact.upsert",
                        "match": {"email": "ann@example.com"},
                        "fields": {"firstName": "Ann", "customerid": "42"},
                        "tags": ["customer"],
                    },
                },
                _FORM: {
                    "schema": {
                        "type": "object",
                        "description": "Mailchimp, Jotform, HTML forms: the vendor's fields.",
                        "additionalProperties": {"type": "string"},
                    }
                },
                _MULTIPART: {
                    "schema": {
                        "type": "object",
                        "description": "Jotform, HTML forms: text fields (files are ignored).",
                        "additionalProperties": {"type": "string"},
                    }
                },
                "text/xml": {
                    "schema": {
                        "type": "string",
                        "description": "Salesforce Outbound Messages (a SOAP envelope).",
                    }
                },
                "application/xml": {"schema": {"type": "string", "description": "As `text/xml`."}},
            },
        },
        "responses": {
            "200": {
                "description": "Nothing new: every event's key was already recorded "
                '(`"duplicate": true`), or a vendor delivery that holds nothing to do. A '
                "Salesforce source answers with the SOAP acknowledgement Salesforce waits "
                "for, on 200 as on 202.",
                "content": {
                    _JSON: {"schema": accepted},
                    "text/xml": {"schema": {"type": "string"}},
                },
            },
            "202": {
                "description": "Accepted: the events and their commands are recorded and will "
                "be applied. A single event object gets one result; an array, and every "
                "vendor delivery, get `events`.",
                "content": {
                    _JSON: {
                        "schema": accepted,
                        "example": {"event_id": "evt-1", "commands": [17], "duplicate": False},
                    },
                    "text/xml": {"schema": {"type": "string"}},
                },
            },
            "303": {
                "description": "An `html_form` source with `redirect_url`: recorded, and the "
                "browser is sent to the thank-you page.",
                "headers": {
                    "Location": {"required": True, "schema": {"type": "string", "minLength": 1}}
                },
            },
            "400": _error(
                "The body is not the format the source sends: not UTF-8 JSON we read "
                "(invalid, `NaN`, a number too large, a repeated key, absurd nesting, an "
                "unpaired surrogate escape), or not the vendor's shape.",
                "malformed_body",
                "bad_request",
            ),
            "401": _error(
                "Not proven to come from the sender: signature headers missing, timestamp "
                "unparseable or more than 5 minutes off, no signature matching, a wrong "
                "shared secret. The expected signature is never shown.",
                "missing_headers",
                "stale_timestamp",
                "invalid_signature",
                "missing_token",
                "invalid_token",
                "missing_credentials",
                "invalid_credentials",
                "unknown_organization",
            ),
            "404": _error("No source with that name.", "unknown_source", "not_found"),
            "413": _response("TooLarge"),
            "415": _error(
                "The `Content-Type` is not one the source's kind takes (`application/json` "
                "for a generic source).",
                "unsupported_media_type",
            ),
            "422": _error(
                "Well-formed, but an event or record cannot become a command; `field` names "
                "where (`type`, `match.email`, `fields.locale`, `[3].tags[0]`, `$`, "
                "`webhook-id`). Or a value the ledger's database refuses to store (a NUL "
                "character with PostgreSQL, a key longer than it keeps): resending cannot help.",
                "invalid_event",
                "unstorable_value",
            ),
            "503": _error(
                "The ledger cannot be written: nothing was kept. Send it again after "
                "`Retry-After` seconds.",
                "ledger_unavailable",
                headers={
                    "Retry-After": {
                        "description": "Seconds to wait before retrying.",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        "example": str(RETRY_AFTER_S),
                    }
                },
            ),
        },
    }


def _webhook_get() -> Schema:
    return {
        "operationId": "probeWebhook",
        "tags": ["webhooks"],
        "summary": "The set-up probe some vendors send before using a webhook URL",
        "description": "Mailchimp checks a webhook URL with a GET: a `mailchimp` source answers "
        "200 without a token. Every other kind takes POST only (405).",
        "parameters": [_SOURCE],
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["status", "source"],
                    "additionalProperties": False,
                    "properties": {"status": {"const": "ok"}, "source": {"type": "string"}},
                },
                "The source answers a GET (Mailchimp).",
            ),
            "404": _error("No source with that name.", "unknown_source", "not_found"),
            "405": _error(
                "This source takes POST only.",
                "method_not_allowed",
                headers={"Allow": {"required": True, "schema": {"const": "POST"}}},
            ),
        },
    }


def _admin(operation_id: str, summary: str, description: str, **rest: Any) -> Schema:
    responses: dict[str, Any] = rest.pop("responses")
    return {
        "operationId": operation_id,
        "tags": _ADMIN_TAGS,
        "summary": summary,
        "description": description,
        "security": _ADMIN_SECURITY,
        **rest,
        "responses": {
            **responses,
            "401": _response("Unauthorized"),
            "404": _response("AdminNotFound"),
        },
    }


def _selection_body() -> Schema:
    return {
        "required": True,
        "content": {
            _JSON: {
                "schema": _ref("Selection"),
                "examples": {
                    "ids": {"value": {"ids": [4182, 4190]}},
                    "filter": {"value": {"filter": {"reason": "server_error", "since": "1d"}}},
                    "all": {"value": {"all": True}},
                },
            }
        },
    }


def _paths() -> dict[str, Schema]:
    base = "/admin/api/dead-letters"
    one = base + "/{command_id}"
    return {
        "/webhooks/{source}": {"post": _webhook_post(), "get": _webhook_get()},
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["health"],
                "summary": "Liveness: the process answers",
                "responses": {"200": _json(_ref("Health"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "tags": ["health"],
                "summary": "Readiness: the ledger and the broker can be reached",
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready: both checks are `ok`."),
                    "503": _json(_ref("Readiness"), "Not ready: a check failed."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["health"],
                "summary": "Prometheus metrics",
                "description": "Deliveries by source, outcome and status; commands by channel "
                "and state; dead letters; rate limits and workers. Names and labels only: "
                "never a payload or a contact. OpenMetrics when the `Accept` header asks "
                "for it.",
                "responses": {
                    "200": {
                        "description": "The exposition.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        base: {
            "get": _admin(
                "listDeadLetters",
                "List dead letters, newest first",
                "Filters combine with AND. An unknown query parameter is refused, so a typo "
                "never lists everything.",
                parameters=_list_parameters(),
                responses={
                    "200": _json(_ref("DeadLetterPage"), "A page of dead letters."),
                    "400": _response("AdminInvalid"),
                },
            )
        },
        one: {
            "parameters": [_COMMAND_ID],
            "get": _admin(
                "getDeadLetter",
                "One dead letter, every field",
                "404 when the command does not exist or is not dead.",
                responses={"200": _json(_ref("DeadLetter"), "The dead letter.")},
            ),
            "delete": _admin(
                "purgeDeadLetter",
                "Purge one dead letter",
                "Deletes the command row; its event stays recorded, so a resent event is "
                "still a duplicate.",
                responses={"200": _json(_ref("Purged"), "Purged (`purged` is 1).")},
            ),
        },
        one + "/replay": {
            "parameters": [_COMMAND_ID],
            "post": _admin(
                "replayDeadLetter",
                "Replay one dead letter",
                "Back to pending with attempts 0, and its task published.",
                responses={"200": _json(_ref("Replayed"), "Replayed.")},
            ),
        },
        base + "/replay": {
            "post": _admin(
                "replayDeadLetters",
                "Replay the selected dead letters",
                "In batches of 500; only commands still dead change, so a second replay "
                "does nothing. Up to the newest dead letter at the time of the call.",
                requestBody=_selection_body(),
                responses={
                    "200": _json(_ref("Replayed"), "What was replayed (maybe nothing)."),
                    "400": _response("AdminInvalid"),
                    "413": _response("TooLarge"),
                },
            )
        },
        base + "/purge": {
            "post": _admin(
                "purgeDeadLetters",
                "Purge the selected dead letters",
                "Deletes the commands; their events stay recorded.",
                requestBody=_selection_body(),
                responses={
                    "200": _json(_ref("Purged"), "How many were purged (maybe 0)."),
                    "400": _response("AdminInvalid"),
                    "413": _response("TooLarge"),
                },
            )
        },
    }


def _version() -> str:
    try:
        return version("contactsync")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout without install
        return "0.0.0"


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once; do not mutate it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "contactsync receiver",
            "version": _version(),
            "description": (
                "Signed webhooks in (`POST /webhooks/{source}`), health checks, and the admin "
                "API for dead letters. Every refusal is JSON: `{error, detail, field?}`. "
                "Guide: docs/api.md."
            ),
        },
        "tags": [
            {"name": "webhooks", "description": "Deliveries from CRMs, forms and your code."},
            {"name": "health", "description": "For load balancers and orchestrators."},
            {
                "name": "admin",
                "description": "Dead letters. Served only when the config has an admin token "
                "(`admin.token` or `admin.token_env`); otherwise every path is 404.",
            },
            {"name": "meta", "description": "This document."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token from the config, as "
                    "`Authorization: Bearer <token>`; compared in constant time.",
                }
            },
        },
    }


def openapi_blueprint() -> Blueprint:
    """``GET /openapi.json``: the document, open to anyone (it holds no config)."""
    blueprint = Blueprint("openapi", __name__)

    @blueprint.get(PATH)
    def openapi() -> Response:
        return jsonify(openapi_document())

    return blueprint
