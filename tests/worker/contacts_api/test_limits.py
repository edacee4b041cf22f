"""The documented limits as pure functions: field names, values and splitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.contacts_api import limits


@pytest.mark.parametrize("name", sorted(limits.STANDARD_FIELDS))
def test_standard_fields_are_always_writable(name: str) -> None:
    assert limits.invalid_field_names([name]) == []
    assert limits.invalid_field_names([name], frozenset()) == []


@pytest.mark.parametrize("name", sorted(limits.READ_ONLY_FIELDS))
def test_read_only_fields_are_never_writable(name: str) -> None:
    assert limits.invalid_field_names([name]) == [name]
    assert limits.invalid_field_names([name], frozenset({name})) == [name]


def test_without_declared_fields_any_well_formed_key_is_writable() -> None:
    names = ["customerid", "isLead", "_private", "a1", "bad-key", "9lives", "", "x" * 65]
    assert limits.invalid_field_names(names) == ["bad-key", "9lives", "", "x" * 65]


def test_with_declared_fields_only_those_keys_are_writable() -> None:
    declared = frozenset({"customerid"})
    names = ["customerid", "firstName", "isLead"]
    assert limits.invalid_field_names(names, declared) == ["isLead"]


@pytest.mark.parametrize(
    ("value", "wire"),
    [(True, "true"), (False, "false"), (None, ""), (0, "0"), (1.5, "1.5"), ("+6012", "+6012")],
)
def test_wire_value(value: object, wire: str) -> None:
    assert limits.wire_value(value) == wire


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=40))
def test_chunks_keep_every_item_once_in_order(items: list[int], size: int) -> None:
    groups = list(limits.chunks(items, size))
    assert [item for group in groups for item in group] == items
    assert all(1 <= len(group) <= size for group in groups)
    assert all(len(group) == size for group in groups[:-1])


def test_chunks_need_a_positive_size() -> None:
    with pytest.raises(ValueError, match="size"):
        list(limits.chunks([1], 0))


@given(st.integers(min_value=0, max_value=200))
def test_field_chunks_of_any_size(count: int) -> None:
    fields = {f"k{i}": i for i in range(count)}
    groups = limits.field_chunks(fields)
    assert len(groups) == limits.calls_for_fields(count)
    assert all(1 <= len(group) <= limits.MAX_FIELDS_PER_CALL for group in groups)
    assert [item for group in groups for item in group.items()] == list(fields.items())


@given(st.lists(st.text(min_size=1, max_size=3), max_size=80))
def test_tag_chunks_drop_repeats_and_keep_order(tags: list[str]) -> None:
    groups = limits.tag_chunks(tags)
    unique = list(dict.fromkeys(tags))
    assert [tag for group in groups for tag in group] == unique
    assert all(1 <= len(group) <= limits.MAX_TAGS_PER_CALL for group in groups)
    assert len(groups) == limits.calls_for_tags(len(unique))


@pytest.mark.parametrize(("count", "calls"), [(0, 0), (1, 1), (30, 1), (31, 2), (45, 2), (91, 4)])
def test_calls_for_fields(count: int, calls: int) -> None:
    assert limits.calls_for_fields(count) == calls


@pytest.mark.parametrize(("count", "calls"), [(0, 0), (1, 1), (10, 1), (11, 2), (25, 3)])
def test_calls_for_tags(count: int, calls: int) -> None:
    assert limits.calls_for_tags(count) == calls
