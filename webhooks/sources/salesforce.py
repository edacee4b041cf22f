"""Salesforce: Outbound Messages, a SOAP ``notifications`` envelope of 1 to 100 records.

Salesforce signs nothing. A delivery is accepted when (1) the URL carries the source's secret
as ``?token=<secret>`` (``token_param``; set it to ``null`` to rely on the organization
alone) and (2) its ``OrganizationId`` is the configured ``organization_id`` (compared
case-sensitively, in constant time, as 18-character ids). The XML is parsed with expat, with
any DOCTYPE or ENTITY declaration refused before it is processed (no entity expansion, no
external entities); the receiver has already bounded the size.

Each ``Notification`` is one record, keyed by its ``Id`` (Salesforce resends the same id when
it retries). Its values are the sObject's fields by API name (``Email``, ``FirstName``,
``Custom__c``…), the record's own ``Id`` as ``salesforce_id`` and its type as
``sobject_type``. Salesforce wants ``<Ack>true</Ack>`` back, or it retries for 24 hours:
:func:`answer` gives it for every recorded delivery, duplicates included.
Docs: https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging.htm
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from pydantic import field_validator

from webhooks.sources.base import (
    MAX_RECORDS,
    InboundRequest,
    InvalidRecord,
    MalformedBody,
    Record,
    SourceOptions,
    Unauthenticated,
)

if TYPE_CHECKING:
    from worker.ledger.store import Recorded

KIND = "salesforce"
CONTENT_TYPES = frozenset({"text/xml", "application/xml"})
DEFAULT_FIELDS = {
    "salesforce_id": "salesforce_id",
    "Email": "email",
    "FirstName": "firstName",
    "LastName": "lastName",
    "Phone": "phone",
}
DEFAULT_MATCH = "salesforce_id"

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body>'
    f'<notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse>'
    "</soapenv:Body></soapenv:Envelope>"
)
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def id18(value: str) -> str:
    """A Salesforce id in its 18-character, case-safe form (``value`` has 15 or 18)."""
    stem = value[:15]
    suffix = "".join(
        _SUFFIX_CHARS[sum(1 << bit for bit, char in enumerate(chunk) if "A" <= char <= "Z")]
        for chunk in (stem[0:5], stem[5:10], stem[10:15])
    )
    return stem + suffix


class Options(SourceOptions):
    """Salesforce's own config keys."""

    organization_id: str
    """The org's id (Setup → Company Information), 15 or 18 characters, starting ``00D``."""
    token_param: str | None = "token"  # noqa: S105 (a parameter name)
    """The query parameter that must hold the source's secret; ``null``: no URL token."""

    @field_validator("organization_id")
    @classmethod
    def _org_id(cls, value: str) -> str:
        value = value.strip()
        if not _ID.match(value) or not value.startswith("00D"):
            raise ValueError("organization_id must be a 15 or 18 character id starting 00D")
        if len(value) == 18 and id18(value) != value:
            raise ValueError("organization_id: the last 3 characters do not match the first 15")
        return id18(value)


class _Declaration(Exception):
    """A DOCTYPE or ENTITY declaration: refused before expat processes it."""


def _refuse(*_: Any) -> int:
    raise _Declaration


def parse_xml(body: bytes) -> Element:
    """Parse ``body`` with expat, refusing DTDs; names become ``{namespace}local``."""
    builder = TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.StartElementHandler = lambda name, attrs: builder.start(
        _name(name), {_name(key): value for key, value in attrs.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_name(name))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
        return builder.close()
    except _Declaration:
        raise MalformedBody("DOCTYPE and ENTITY declarations are not accepted") from None
    except (expat.ExpatError, ValueError) as error:
        raise MalformedBody(f"body is not well-formed XML: {str(error)[:200]}") from None


def _name(expanded: str) -> str:
    return "{" + expanded if "}" in expanded else expanded


def _child(parent: Element, tag: str) -> Element | None:
    return next((child for child in parent if child.tag == tag), None)


def _text(element: Element | None) -> str | None:
    if element is None or element.get(f"{{{XSI_NS}}}nil") == "true" or len(element):
        return None
    return element.text or ""


def _notifications(body: bytes) -> Element:
    envelope = parse_xml(body)
    body_element = _child(envelope, f"{{{SOAP_NS}}}Body")
    if envelope.tag != f"{{{SOAP_NS}}}Envelope" or body_element is None:
        raise MalformedBody("not a SOAP 1.1 envelope with a Body")
    notifications = _child(body_element, f"{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        raise MalformedBody("not a Salesforce Outbound Message: no notifications element")
    return notifications


def verify(
    request: InboundRequest, secrets: Sequence[str], options: Options, now: Callable[[], float]
) -> None:
    """Check the URL token (if configured), then the sending organization."""
    if options.token_param is not None:
        token = request.query.get(options.token_param)
        if not token:
            raise Unauthenticated(
                f"missing ?{options.token_param}= in the URL", error="missing_credentials"
            )
        given = token.encode("utf-8", "surrogatepass")
        if not any(hmac.compare_digest(given, secret.encode()) for secret in secrets):
            raise Unauthenticated(
                f"the {options.token_param} parameter does not match", error="invalid_credentials"
            )
    sender = _text(_child(_notifications(request.body), f"{{{OUTBOUND_NS}}}OrganizationId"))
    if not sender:
        raise Unauthenticated("no OrganizationId in the message", error="unknown_organization")
    sender = sender.strip()
    known = id18(sender) if _ID.match(sender) else sender
    if not hmac.compare_digest(known.encode(), options.organization_id.encode()):
        raise Unauthenticated(
            "the message comes from another organization", error="unknown_organization"
        )


def _record(index: int, notification: Element) -> Record:
    where = f"Notification[{index}]"
    key = (_text(_child(notification, f"{{{OUTBOUND_NS}}}Id")) or "").strip()
    if not key or len(key) > 64:
        raise InvalidRecord("a Notification needs an Id", field=f"{where}.Id")
    sobject = _child(notification, f"{{{OUTBOUND_NS}}}sObject")
    if sobject is None:
        raise MalformedBody("a Notification needs an sObject", field=f"{where}.sObject")
    sobject_type = (sobject.get(f"{{{XSI_NS}}}type") or "sObject").rpartition(":")[2]
    values: dict[str, Any] = {}
    for field in sobject:
        name = field.tag.rpartition("}")[2]
        values["salesforce_id" if name == "Id" else name] = _text(field)
    values["sobject_type"] = sobject_type
    return Record(key=key, type=sobject_type, values=values)


def records(request: InboundRequest, options: Options) -> list[Record]:
    """One record per ``Notification``."""
    notifications = _notifications(request.body)
    items = [child for child in notifications if child.tag == f"{{{OUTBOUND_NS}}}Notification"]
    if not items:
        raise MalformedBody("the message holds no Notification")
    if len(items) > MAX_RECORDS:
        raise InvalidRecord(f"{len(items)} notifications in one message; Salesforce sends 100")
    return [_record(index, item) for index, item in enumerate(items)]


def answer(recorded: Sequence[Recorded], options: Options) -> tuple[str, int, dict[str, str]]:
    """The SOAP acknowledgement Salesforce waits for; without it, it sends the message again."""
    return ACK, 200, {"Content-Type": "text/xml; charset=utf-8"}
