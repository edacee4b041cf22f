"""Salesforce Outbound Messages: URL token, organization, safe XML, Ack, end to end."""

from __future__ import annotations

import contextlib
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from source_kit import SourceKit

from webhooks.sources import salesforce
from webhooks.sources.base import InboundRequest, SourceRefusal

SECRET = "salesforce-url-token"
ORG = "00Dn00000008y2tEAA"

CONFIG: dict[str, Any] = {
    "kind": "salesforce",
    "secret": SECRET,
    "channel": "main",
    "organization_id": ORG,
    "fields": {"Plan__c": "plan"},
    "tags": ["salesforce"],
}


def notification(notification_id: str, contact_id: str, **fields: str | None) -> str:
    """One ``<Notification>`` of a Contact, fields by API name (``None``: xsi:nil)."""
    cells = "".join(
        f'<sf:{name} xsi:nil="true"/>'
        if value is None
        else f"<sf:{name}>{escape(value)}</sf:{name}>"
        for name, value in fields.items()
    )
    return (
        f"<Notification><Id>{notification_id}</Id>"
        '<sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<sf:Id>{contact_id}</sf:Id>{cells}</sObject></Notification>"
    )


def envelope(*notifications: str, org: str = ORG) -> bytes:
    """A message as Salesforce sends it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04kn000000000m5AAA</ActionId>"
        '<SessionId xsi:nil="true"/>'
        "<EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00Dn0000000</EnterpriseUrl>"
        "<PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00Dn0000000</PartnerUrl>"
        + "".join(notifications)
        + "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


ANN = notification(
    "04ln0000009JvY4AAK",
    "003n000000NOtUbAAL",
    Email="ann@example.com",
    FirstName="Ann",
    LastName="O'Neil & Co",
    Plan__c="Gold",
    Phone=None,
)
BOB = notification("04ln0000009JvY5AAK", "003n000000NOtUcAAL", Email="bob@example.com")
MESSAGE = envelope(ANN, BOB)


def deliver(
    kit: SourceKit,
    body: bytes = MESSAGE,
    *,
    token: str | None = SECRET,
    content_type: str = "text/xml; charset=utf-8",
) -> Any:
    path = "sf" if token is None else f"sf?token={token}"
    return kit.post(path, body, {"Content-Type": content_type})


def test_a_message_reaches_the_sandbox_and_is_acked(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    response = deliver(kit)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == salesforce.ACK
    assert "<Ack>true</Ack>" in salesforce.ACK
    assert len(kit.recorded()) == 2
    assert set(kit.apply_all()) <= {"done", "skipped"}
    assert [row["state"] for row in kit.recorded()] == ["done", "done"]
    ann = kit.contact("salesforce_id", "003n000000NOtUbAAL")
    assert ann["custom_fields"]["email"] == "ann@example.com"
    assert ann["custom_fields"]["lastName"] == "O'Neil & Co"
    assert ann["custom_fields"]["plan"] == "Gold"
    assert "phone" not in ann["custom_fields"]  # xsi:nil: no value
    assert ann["tags"] == ["salesforce"]
    bob = kit.contact("salesforce_id", "003n000000NOtUcAAL")
    assert bob["custom_fields"]["email"] == "bob@example.com"


def test_a_redelivery_is_acked_again_with_no_second_effect(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    assert deliver(kit).status_code == 200
    kit.apply_all()
    again = deliver(kit)
    assert again.status_code == 200 and again.get_data(as_text=True) == salesforce.ACK
    assert len(kit.recorded()) == 2
    assert kit.apply_all() == []


def test_another_organization_is_401_and_nothing_is_recorded(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    for org in ("00Dn00000008y2TEAA", "00Dn00000008y2uEAA", "", "x" * 300):
        response = deliver(kit, envelope(BOB, org=org))
        assert response.status_code == 401, org
        assert response.get_json()["error"] == "unknown_organization"
    assert kit.recorded() == []


def test_a_15_character_organization_id_matches_its_18_character_form(source_kit: Any) -> None:
    kit = source_kit({"sf": {**CONFIG, "organization_id": ORG[:15]}})
    assert deliver(kit).status_code == 200


def test_a_missing_or_wrong_url_token_is_401(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    missing = deliver(kit, token=None)
    assert missing.status_code == 401 and missing.get_json()["error"] == "missing_credentials"
    wrong = deliver(kit, token="guess")
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "invalid_credentials"
    assert kit.recorded() == []


def test_the_url_token_can_be_turned_off(source_kit: Any) -> None:
    kit = source_kit({"sf": {**CONFIG, "token_param": None}})
    assert deliver(kit, token=None).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<a><b></a>",
        b'<?xml version="1.0"?><Envelope><Body/></Envelope>',
        envelope().replace(b"notifications", b"other"),
        envelope(),  # no Notification
        envelope(BOB.replace("<sObject", "<other").replace("</sObject>", "</other>")),
    ],
)
def test_a_malformed_body_is_400(source_kit: Any, body: bytes) -> None:
    kit = source_kit({"sf": {**CONFIG, "token_param": None}})
    response = deliver(kit, body, token=None)
    assert response.status_code == 400, response.get_json()
    assert kit.recorded() == []


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b"<lolz>&lol3;</lolz>"
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    + envelope(BOB).split(b"?>", 1)[1].replace(b"bob@example.com", b"&x;")
)
PARAMETER_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><e/>'
)
UTF16_DOCTYPE = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY b "c">]><a/>'.encode(
    "utf-16"
)


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY, UTF16_DOCTYPE])
def test_xml_attacks_are_refused_with_400(source_kit: Any, body: bytes) -> None:
    kit = source_kit({"sf": CONFIG})
    response = deliver(kit, body)
    assert response.status_code == 400
    assert "DOCTYPE" in response.get_json()["detail"]
    assert kit.recorded() == []


def test_more_than_100_notifications_is_422(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    many = [
        notification(f"04ln{n:014d}", f"003n{n:014d}", Email="x@example.com") for n in range(101)
    ]
    assert deliver(kit, envelope(*many)).status_code == 422
    assert kit.recorded() == []


def test_a_notification_without_an_id_is_422_naming_it(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    response = deliver(kit, envelope(ANN, BOB.replace("04ln0000009JvY5AAK", "")))
    assert response.status_code == 422
    assert response.get_json()["field"] == "Notification[1].Id"
    assert kit.recorded() == []


def test_content_types(source_kit: Any) -> None:
    kit = source_kit({"sf": CONFIG})
    assert deliver(kit, content_type="application/xml").status_code == 200
    assert deliver(kit, content_type="application/json").status_code == 415


def test_records_hold_the_sobject_fields_by_api_name() -> None:
    request = InboundRequest("POST", "http://x/webhooks/sf", {}, MESSAGE, "text/xml")
    options = salesforce.Options(organization_id=ORG)
    first, second = salesforce.records(request, options)
    assert first.key == "04ln0000009JvY4AAK" and first.type == "Contact"
    assert first.values == {
        "salesforce_id": "003n000000NOtUbAAL",
        "Email": "ann@example.com",
        "FirstName": "Ann",
        "LastName": "O'Neil & Co",
        "Plan__c": "Gold",
        "Phone": None,
        "sobject_type": "Contact",
    }
    assert second.key == "04ln0000009JvY5AAK"


@pytest.mark.parametrize(
    "bad",
    ["", "00Dn00000008y2", "001n00000008y2tEAA", "00Dn00000008y2tEAB", "00Dn00000008y2t-AA"],
)
def test_a_bad_organization_id_fails_at_start(bad: str) -> None:
    with pytest.raises(ValidationError):
        salesforce.Options(organization_id=bad)


def test_id18_adds_the_case_checksum() -> None:
    assert salesforce.id18("003n000000NOtUb") == "003n000000NOtUbAAL"
    assert salesforce.id18("00Dn00000008y2t") == ORG


FIELD = st.text(st.characters(codec="utf-8"), max_size=30)
STRUCTURED = st.builds(
    lambda org, notification_id, value, raw: envelope(
        notification(notification_id, "003n000000NOtUbAAL", Email=value).replace(
            "</sObject>", raw + "</sObject>"
        ),
        org=org,
    ),
    org=st.sampled_from([ORG, ORG[:15], ""]) | FIELD,
    notification_id=FIELD,
    value=FIELD,
    raw=FIELD,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=2000) | STRUCTURED,
    token=st.none() | st.text(st.characters(exclude_categories=()), max_size=30),
    token_param=st.sampled_from([None, "token"]),
)
def test_no_bytes_make_it_raise_anything_but_its_refusals(
    body: bytes, token: str | None, token_param: str | None
) -> None:
    query = {} if token is None else {"token": token}
    request = InboundRequest("POST", "http://x/webhooks/sf", {}, body, "text/xml", query=query)
    options = salesforce.Options(organization_id=ORG, token_param=token_param)
    for step in (
        lambda: salesforce.verify(request, [SECRET], options, lambda: 0.0),
        lambda: salesforce.records(request, options),
    ):
        with contextlib.suppress(SourceRefusal):
            step()
