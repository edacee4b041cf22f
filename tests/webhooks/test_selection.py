"""Reading an operator's selection of dead letters: times, filters, ids."""

from __future__ import annotations

import pytest

from webhooks.selection import SelectionError, filter_from, parse_ids, parse_since

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("3D", NOW - 3 * 86400),
        ("1w", NOW - 7 * 86400),
        ("1.5h", NOW - 5400),
        ("2023-11-14", 1_699_920_000.0),
        ("2023-11-14T22:13:20", NOW),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("1700000000", NOW),
    ],
)
def test_since_reads_relative_iso_and_epoch_times(text: str, epoch: float) -> None:
    assert parse_since(text, now=NOW) == epoch


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5", "nan", "inf", "", "2023-13-01"])
def test_since_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_since(text, now=NOW)


def test_filter_names_the_bad_parameter() -> None:
    assert filter_from({"channel": "main", "since": 5}).since == 5.0
    with pytest.raises(SelectionError) as caught:
        filter_from({"since": "soon"}, prefix="filter.")
    assert caught.value.param == "filter.since"
    with pytest.raises(SelectionError) as caught:
        filter_from({"reason": 3})
    assert caught.value.param == "reason"


def test_ids_must_be_positive_integers() -> None:
    assert parse_ids([3, 1]) == [3, 1]
    for bad in ([], [0], ["1"], [1.0], [False], "1", None):
        with pytest.raises(SelectionError):
            parse_ids(bad)
