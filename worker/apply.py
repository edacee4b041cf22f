"""Applying a contact's claimed commands to the Contacts API in one pass.

Resolution: the command's contact id if it has one (given by the event, or learnt by an
earlier attempt), else the id this contact last resolved to (the ledger's cache), else a
lookup on the match field. A cached id the API no longer knows is forgotten and resolved
again, once. A pass that looked up, found nothing and was then deferred (its create's start
was far) creates on its next claim without looking again, while that lookup is recent
(``worker.not_found_trust_s``): the contact's commands are serialised, so only someone
else's create could have changed the answer. An upsert of a contact that does not exist
creates it with the match field set; a tag or untag of one is "no such contact".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from worker import merge
from worker.contacts_api import ContactsClient, NotFound, PermanentError
from worker.contacts_api.errors import ContactsApiError, TransientError
from worker.ledger import Claimed, Ledger


class NoSuchContact(PermanentError):
    """No contact matches the command's match field and value."""

    reason = "no_such_contact"


@dataclass
class Progress:
    """What an attempt learnt before it ended, kept when it fails so a retry can skip it."""

    contact_id: str | None = None
    done: set[str] = field(default_factory=set)
    """Steps applied in this pass or an interrupted earlier one: ``fields``, ``adds``,
    ``removes`` (a create applies the fields)."""
    absent_at: float | None = None
    """When this pass, or the deferred one it resumes, looked the contact up and found none
    (wall clock): kept across a deferral so that the resumed pass does not look again."""
    create_uncertain: bool = False
    """A create failed in a way that leaves open whether the API applied it (a timeout, a
    dropped connection, a 5xx): the next attempt must wait before it looks up again."""


@dataclass(frozen=True)
class Work:
    """A claimed group (head first), its net effect, and how its contact is known."""

    group: Sequence[Claimed]
    plan: merge.Plan
    contact_id: str | None
    """Known without a lookup (explicit, learnt, or cached)."""
    cached: bool
    """``contact_id`` came from the cache (and may be stale)."""
    absent_at: float | None = None
    """A recent lookup found no contact (a deferred pass's): create without looking."""

    @property
    def head(self) -> Claimed:
        """The first command of the group."""
        return self.group[0]

    def estimate_calls(self) -> int:
        """The calls this will most likely take, to reserve them in one go."""
        unknown = self.contact_id is None
        lookup = unknown and self.absent_at is None
        return max(1, merge.calls_needed(self.plan, lookup=lookup, creating=unknown, match=1))


def prepare(group: Sequence[Claimed], ledger: Ledger, *, not_found_trust_s: float = 0.0) -> Work:
    """Plan the group and find its contact id without calling the API: known, cached, or
    known to be absent by a lookup at most ``not_found_trust_s`` old."""
    head = group[0]
    done_later = ledger.later_done(head)
    plan = merge.plan_group([(c.seq, c.kind, c.payload) for c in group], done_later)
    if head.contact_id is not None:
        return Work(group, plan, head.contact_id, cached=False)
    cached = ledger.cached_contact_id(head.channel, head.contact_key)
    if cached is not None:
        return Work(group, plan, cached, cached=True)
    absent_at = head.absent_at
    if absent_at is not None and not 0 <= time.time() - absent_at <= not_found_trust_s:
        absent_at = None  # too old to trust (or from a clock ahead of ours): look again
    return Work(group, plan, None, cached=False, absent_at=absent_at)


def _lookup(work: Work, client: ContactsClient) -> tuple[str | None, list[str] | None]:
    head = work.head
    assert head.match_field is not None
    assert head.match_value is not None
    matches = client.find_by_custom_field(head.match_field, head.match_value)
    if not matches:
        return None, None
    # Several matches: the oldest contact is the one the business has been using.
    oldest = min(matches, key=lambda contact: (contact.created_at or 0, contact.id))
    return oldest.id, oldest.tags


def apply(work: Work, client: ContactsClient, ledger: Ledger, progress: Progress) -> str:
    """Apply the work; returns the contact id. Raises the client's errors."""
    try:
        return _apply(work, client, progress)
    except NotFound:
        if not work.cached:
            raise
        # The cache was stale (the contact was deleted or merged): forget it, look again.
        head = work.head
        assert work.contact_id is not None
        ledger.forget_contact(head.channel, head.contact_key, work.contact_id)
        fresh = Work(work.group, work.plan, None, cached=False)
        return _apply(fresh, client, progress)


def _apply(work: Work, client: ContactsClient, progress: Progress) -> str:
    plan = work.plan
    contact_id, known_tags = work.contact_id, None
    if contact_id is None and work.absent_at is not None:
        progress.absent_at = work.absent_at  # the lookup's own time: trust does not renew
    elif contact_id is None:
        contact_id, known_tags = _lookup(work, client)
        if contact_id is None:
            progress.absent_at = time.time()
    progress.contact_id = contact_id
    if contact_id is None:
        head = work.head
        if not plan.may_create:
            raise NoSuchContact(
                f"no such contact: no contact has {head.match_field} = {head.match_value!r}"
            )
        assert head.match_field is not None
        try:
            contact_id = client.create({head.match_field: head.match_value, **plan.fields})
        except ContactsApiError as error:
            progress.contact_id = error.created_contact_id
            progress.create_uncertain = (
                isinstance(error, TransientError) and error.created_contact_id is None
            )
            raise
        progress.contact_id = contact_id
        progress.done.add("fields")
        plan = merge.trim_to_known(merge.Plan({}, plan.tags, True), [])
    else:
        plan = merge.trim_to_known(plan, known_tags)
        if plan.fields and "fields" not in progress.done:
            client.update(contact_id, plan.fields)
            progress.done.add("fields")
    if plan.adds and "adds" not in progress.done:
        client.add_tags(contact_id, plan.adds)
        progress.done.add("adds")
    if plan.removes and "removes" not in progress.done:
        client.remove_tags(contact_id, plan.removes)
        progress.done.add("removes")
    return contact_id
