"""Standard Webhooks signing and verification (webhooks/signing.py)."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from webhooks.signing import (
    InvalidSignature,
    MissingHeaders,
    SignatureError,
    StaleTimestamp,
    WebhookSecret,
    sign,
    verify,
)

# The published test vector of the Standard Webhooks reference library:
# github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
# (test_sign_function, test_invalid_signature_raises_error, test_multi_sig_payload_is_valid).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_WRONG_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
VECTOR_DECOYS = [
    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
]

SECRET = WebhookSecret.parse(VECTOR_SECRET)
OTHER = WebhookSecret(b"another secret of 24+ bytes, for rotation")
NOW = float(VECTOR_TIMESTAMP)


def headers(
    signature: str = VECTOR_SIGNATURE,
    msg_id: str = VECTOR_ID,
    timestamp: str = str(VECTOR_TIMESTAMP),
) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}


def check(
    given_headers: dict[str, str] | Headers,
    body: bytes = VECTOR_BODY,
    secrets: WebhookSecret | list[WebhookSecret] = SECRET,
    now: float = NOW,
) -> None:
    verify(secrets, given_headers, body, now=lambda: now)


# --- the published vector -------------------------------------------------------------


def test_sign_reproduces_the_published_vector() -> None:
    assert sign(SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_accepts_the_published_vector() -> None:
    check(headers())


def test_secret_without_the_whsec_prefix_is_the_same_key() -> None:
    assert WebhookSecret.parse(VECTOR_SECRET.removeprefix("whsec_")) == SECRET
    check(headers(), secrets=WebhookSecret.parse(VECTOR_SECRET.removeprefix("whsec_")))


def test_published_wrong_signature_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(VECTOR_WRONG_SIGNATURE))


def test_published_multi_signature_list_passes_on_its_one_valid_entry() -> None:
    listed = " ".join([*VECTOR_DECOYS, VECTOR_SIGNATURE, VECTOR_DECOYS[0]])
    check(headers(listed))


def test_decoys_alone_are_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(" ".join(VECTOR_DECOYS)))


# --- round trips and rotation ---------------------------------------------------------


def test_round_trip_over_bytes_that_are_not_utf8() -> None:
    body = b"\xff\xfe\x00binary"
    check(headers(sign(SECRET, "msg_1", 1000, body), "msg_1", "1000"), body, now=1000.0)


def test_a_changed_body_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(), body=VECTOR_BODY + b" ")


def test_a_changed_id_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(msg_id="msg_other"))


def test_a_changed_timestamp_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(timestamp=str(VECTOR_TIMESTAMP + 1)))


def test_the_timestamp_is_verified_as_sent_with_leading_zeros() -> None:
    stamp = "0" + str(VECTOR_TIMESTAMP)
    signature = sign(SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    with pytest.raises(InvalidSignature):  # the sender signed "0161...", not "161..."
        check(headers(signature, timestamp=stamp))


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(), secrets=OTHER)


def test_sender_rotation_one_of_several_signatures_matches() -> None:
    old = sign(OTHER, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    check(headers(f"{old} {VECTOR_SIGNATURE}"))
    check(headers(f"{VECTOR_SIGNATURE}   {old}"))


def test_receiver_rotation_any_of_several_secrets_matches() -> None:
    check(headers(), secrets=[OTHER, SECRET])
    check(headers(), secrets=[SECRET, OTHER])


def test_receiver_rotation_refuses_when_no_secret_matches() -> None:
    with pytest.raises(InvalidSignature):
        check(headers(), secrets=[OTHER, WebhookSecret.generate()])


def test_verify_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        check(headers(), secrets=[])


def test_repeated_signature_headers_are_read_as_one_list() -> None:
    old = sign(OTHER, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    werkzeug_headers = Headers(
        [
            ("Webhook-Id", VECTOR_ID),
            ("Webhook-Timestamp", str(VECTOR_TIMESTAMP)),
            ("Webhook-Signature", old),
            ("Webhook-Signature", VECTOR_SIGNATURE),
        ]
    )
    check(werkzeug_headers)


# --- headers --------------------------------------------------------------------------


def test_header_names_are_case_insensitive() -> None:
    check({name.upper(): value for name, value in headers().items()})
    check(Headers(headers()))


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(name: str) -> None:
    given_headers = headers()
    del given_headers[name]
    with pytest.raises(MissingHeaders, match=name):
        check(given_headers)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_an_empty_header_counts_as_missing(name: str) -> None:
    with pytest.raises(MissingHeaders):
        check({**headers(), name: "  "})


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp"])
def test_a_repeated_id_or_timestamp_is_refused(name: str) -> None:
    given = Headers(headers())
    given.add(name, "msg_2" if name == "webhook-id" else "1614265331")
    with pytest.raises(InvalidSignature, match="more than once"):
        check(given)


@pytest.mark.parametrize("msg_id", ["msg.1", "msg 1", "msg\t1", "msg_é", "x" * 257], ids=repr)
def test_an_id_that_cannot_be_signed_unambiguously_is_refused(msg_id: str) -> None:
    with pytest.raises(InvalidSignature):
        check(headers(msg_id=msg_id))
    with pytest.raises(ValueError, match="webhook-id"):
        sign(SECRET, msg_id, VECTOR_TIMESTAMP, VECTOR_BODY)


@pytest.mark.parametrize(
    "signature",
    [
        "v1",
        "v1,",
        ",",
        "v1,!!!!",
        "v1,abc",  # not padded
        "v1,YWJj",  # valid base64, but 3 bytes, not a SHA-256 digest
        "v1,a,b",
        "garbage",
        "v1 " + VECTOR_SIGNATURE.removeprefix("v1,"),
        "V1," + VECTOR_SIGNATURE.removeprefix("v1,"),
        "v1a," + VECTOR_SIGNATURE.removeprefix("v1,"),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",  # padding dropped
        "v1,\uff21\uff22\uff23\uff24",  # full-width letters
    ],
    ids=repr,
)
def test_a_malformed_signature_list_is_an_invalid_signature(signature: str) -> None:
    with pytest.raises(InvalidSignature):
        check(headers(signature))


def test_malformed_entries_do_not_hide_a_valid_one() -> None:
    check(headers(f"v1 v1, ,, v1,!!! v2,x {VECTOR_SIGNATURE}"))


# --- the replay window ----------------------------------------------------------------


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_a_timestamp_within_five_minutes_either_side_passes(offset: int) -> None:
    check(headers(), now=NOW + offset)


def test_a_timestamp_over_five_minutes_old_is_stale() -> None:
    with pytest.raises(StaleTimestamp, match="too old"):
        check(headers(), now=NOW + 301)


def test_a_timestamp_over_five_minutes_ahead_is_refused() -> None:
    with pytest.raises(StaleTimestamp, match="future"):
        check(headers(), now=NOW - 301)


def test_the_window_is_checked_before_the_signature() -> None:
    with pytest.raises(StaleTimestamp):
        check(headers(VECTOR_WRONG_SIGNATURE), now=NOW + 3600)


def test_tolerance_is_configurable() -> None:
    verify(SECRET, headers(), VECTOR_BODY, now=lambda: NOW + 30, tolerance_s=60)
    with pytest.raises(StaleTimestamp):
        verify(SECRET, headers(), VECTOR_BODY, now=lambda: NOW + 61, tolerance_s=60)


@pytest.mark.parametrize(
    "stamp",
    [
        "hello",
        "1614265330.0",
        "1e9",
        "+1614265330",
        "-1",
        "1_614_265_330",
        "\u0661\u0666\u0661\u0664",  # Arabic-Indic digits, which int() accepts
        "9" * 13,
        "nan",
        "inf",
        "0x60",
    ],
    ids=repr,
)
def test_an_unparseable_timestamp_is_refused_as_stale(stamp: str) -> None:
    with pytest.raises(StaleTimestamp, match="not an integer"):
        check(headers(timestamp=stamp))


# --- secrets --------------------------------------------------------------------------


def test_repr_and_str_never_show_the_key() -> None:
    key_text = VECTOR_SECRET.removeprefix("whsec_")
    for shown in (repr(SECRET), str(SECRET), repr([SECRET]), f"{SECRET}"):
        assert key_text not in shown
        assert "hidden" in shown


def test_reveal_round_trips() -> None:
    assert SECRET.reveal() == VECTOR_SECRET
    fresh = WebhookSecret.generate()
    assert WebhookSecret.parse(fresh.reveal()) == fresh
    assert fresh != SECRET


def test_unpadded_and_whitespace_wrapped_secrets_parse() -> None:
    padded = "whsec_" + base64.b64encode(b"k" * 25).decode()
    assert padded.endswith("=")
    assert WebhookSecret.parse(padded.rstrip("=")) == WebhookSecret.parse(padded)
    assert WebhookSecret.parse(f"  {VECTOR_SECRET}\n") == SECRET


@pytest.mark.parametrize(
    "text",
    [
        "whsec_not base64!",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa$w",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwA",  # 4n+1 characters: no byte string
        "whsec_\uff2dfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # a full-width M
    ],
    ids=repr,
)
def test_a_secret_that_does_not_decode_is_a_config_error_without_the_secret(text: str) -> None:
    with pytest.raises(ValueError, match="not valid base64") as caught:
        WebhookSecret.parse(text)
    body = text.removeprefix("whsec_")
    assert body not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("text", ["", "whsec_", "   "])
def test_an_empty_secret_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        WebhookSecret.parse(text)


def test_a_secret_shorter_than_24_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 24"):
        WebhookSecret.parse("whsec_" + base64.b64encode(b"k" * 23).decode())


def test_sign_refuses_a_negative_timestamp() -> None:
    with pytest.raises(ValueError, match="negative"):
        sign(SECRET, VECTOR_ID, -1, VECTOR_BODY)


# --- properties -----------------------------------------------------------------------

header_names = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "content-type"]
) | st.text(max_size=20)
signature_entries = st.one_of(
    st.text(max_size=60),
    st.builds(lambda v, s: f"{v},{s}", st.sampled_from(["v1", "v2", "v1a", ""]), st.text()),
    st.builds(
        lambda raw: "v1," + base64.b64encode(raw).decode(), st.binary(min_size=30, max_size=34)
    ),
)


@settings(max_examples=300)
@given(
    body=st.binary(max_size=200),
    extra=st.dictionaries(header_names, st.text(max_size=80), max_size=5),
)
def test_no_headers_or_body_make_verify_raise_anything_but_signature_errors(
    body: bytes, extra: dict[str, str]
) -> None:
    with contextlib.suppress(SignatureError):
        verify(SECRET, extra, body, now=lambda: NOW)


@settings(max_examples=300)
@given(
    body=st.binary(max_size=200),
    msg_id=st.text(max_size=40) | st.just(VECTOR_ID),
    stamp=st.text(max_size=15) | st.integers(-(10**14), 10**14).map(str),
    entries=st.lists(signature_entries, max_size=5),
)
def test_no_signature_list_makes_verify_raise_anything_but_signature_errors(
    body: bytes, msg_id: str, stamp: str, entries: list[str]
) -> None:
    try:
        verify([SECRET, OTHER], headers(" ".join(entries), msg_id, stamp), body, now=lambda: NOW)
    except SignatureError:
        pass
    else:  # nothing random passes, short of forging HMAC-SHA256
        raise AssertionError("a random signature list was accepted")


@settings(max_examples=100)
@given(
    body=st.binary(max_size=300),
    msg_id=st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True),
    stamp=st.integers(0, 10**11),
)
def test_whatever_we_sign_we_verify(body: bytes, msg_id: str, stamp: int) -> None:
    signature = sign(SECRET, msg_id, stamp, body)
    verify(SECRET, headers(signature, msg_id, str(stamp)), body, now=lambda: float(stamp))
