"""load_json: the strict parse every JSON source shares."""

from __future__ import annotations

import json
import threading

import pytest

from webhooks.sources.base import MalformedBody, load_json


@pytest.mark.parametrize(
    "escape",
    ["\\ud800", "\\uDBFF", "\\udc00", "\\uDFFF", "a\\ud83d", "\\ude00b"],
)
def test_an_escaped_lone_surrogate_is_refused(escape: str) -> None:
    with pytest.raises(MalformedBody, match="surrogate"):
        load_json(f'{{"name": "{escape}"}}'.encode())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"\\ud83d\\ude00"', "\U0001f600"),  # a pair: one character
        ('"\\\\ud800"', "\\ud800"),  # an escaped backslash, then letters: no surrogate
        ('"\\u00e9 \\u20ac"', "é €"),
        ('"\\uD7FF\\uE000"', "\ud7ff\ue000"),  # either side of the surrogate range
        ('"😀"', "😀"),
    ],
)
def test_everything_else_parses_as_json_does(text: str, value: str) -> None:
    body = f'{{"name": {text}}}'.encode()
    assert load_json(body) == {"name": value} == json.loads(body)


def test_nesting_past_the_interpreter_is_malformed() -> None:
    with pytest.raises(MalformedBody, match="nested too deeply"):
        load_json(b"[" * 100_000 + b"]" * 100_000)


def test_threads_parsing_at_once_each_get_their_own_document() -> None:
    """Each thread parses with its own decoder: the hooks run Python in the middle of a
    document, so another thread's parse can start inside it."""
    documents = [
        {"id": f"evt-{n}", "n": n, "price": n / 7, "nested": {"key": f"v{n}", "list": [n, n]}}
        for n in range(400)
    ]
    bodies = [json.dumps(document).encode() for document in documents]
    failures: list[str] = []

    def parse(offset: int) -> None:
        for _ in range(5):
            for index in range(offset, len(bodies), 4):
                if load_json(bodies[index]) != documents[index]:
                    failures.append(f"document {index}")

    threads = [threading.Thread(target=parse, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with pytest.raises(MalformedBody, match="appears twice"):  # the hooks still apply
        load_json(b'{"a": 1, "a": 2}')


def test_a_byte_order_mark_is_named() -> None:
    with pytest.raises(MalformedBody, match="BOM"):
        load_json(b"\xef\xbb\xbf{}")
