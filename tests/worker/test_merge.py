"""Merging a contact's waiting commands: any interleaving ends in the state of applying
them one by one, in order."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.merge import Plan, calls_needed, mergeable, plan, trim_to_known

TAGS = st.sampled_from(["vip", "lead", "trial", "churned"])
FIELDS = st.dictionaries(
    st.sampled_from(["firstName", "lastName", "customerid"]), st.text(max_size=3), max_size=3
)
COMMAND = st.one_of(
    st.tuples(
        st.just("upsert"),
        st.builds(lambda f, t: {"fields": f, "tags": t}, FIELDS, st.lists(TAGS, max_size=2)),
    ),
    st.tuples(st.just("tag"), st.builds(lambda t: {"tags": t}, st.lists(TAGS, min_size=1))),
    st.tuples(st.just("untag"), st.builds(lambda t: {"tags": t}, st.lists(TAGS, min_size=1))),
)


def one_by_one(state: tuple[dict[str, Any], set[str]], commands: list[Any]) -> Any:
    fields, tags = dict(state[0]), set(state[1])
    for kind, payload in commands:
        fields.update(payload.get("fields") or {})
        if kind == "untag":
            tags -= set(payload["tags"])
        else:
            tags |= set(payload.get("tags") or [])
    return fields, tags


def merged(state: tuple[dict[str, Any], set[str]], p: Plan) -> Any:
    fields, tags = dict(state[0]), set(state[1])
    fields.update(p.fields)
    return fields, (tags | set(p.adds)) - set(p.removes)


@given(st.lists(COMMAND, max_size=12), FIELDS, st.sets(TAGS))
def test_the_merged_pass_ends_where_one_by_one_ends(
    commands: list[Any], fields: dict[str, Any], tags: set[str]
) -> None:
    start = (fields, tags)
    assert merged(start, plan(commands)) == one_by_one(start, commands)
    # Knowing the contact's tags only removes calls, never changes the outcome.
    assert merged(start, trim_to_known(plan(commands), tags)) == one_by_one(start, commands)


def test_tag_then_untag_is_a_removal_and_free_when_known_absent() -> None:
    p = plan([("tag", {"tags": ["vip"]}), ("untag", {"tags": ["vip"]})])
    assert p.removes == ["vip"] and p.adds == []
    assert trim_to_known(p, []).tags == {}
    assert calls_needed(trim_to_known(p, []), lookup=False) == 0


def test_an_upsert_and_tags_take_the_fewest_calls() -> None:
    p = plan(
        [
            ("upsert", {"fields": {"firstName": "A"}}),
            ("tag", {"tags": ["x", "y"]}),
            ("upsert", {"fields": {"firstName": "B", "lastName": "C"}}),
        ]
    )
    assert p.fields == {"firstName": "B", "lastName": "C"}
    assert calls_needed(p, lookup=True) == 3  # lookup, one update, one add


def test_groups_starting_with_a_tag_stop_before_an_upsert() -> None:
    assert mergeable(["tag", "untag", "upsert", "tag"]) == 2
    assert mergeable(["upsert", "tag", "upsert", "untag"]) == 4
    assert mergeable([]) == 0


def test_a_replayed_command_does_not_undo_later_changes() -> None:
    old = plan([("upsert", {"fields": {"firstName": "Old", "lastName": "L"}, "tags": ["vip"]})])
    later = [("upsert", {"fields": {"firstName": "New"}}), ("untag", {"tags": ["vip"]})]
    trimmed = old.without(later)
    assert trimmed.fields == {"lastName": "L"}
    assert trimmed.tags == {}
