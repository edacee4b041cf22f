"""What the ledger raises when it cannot keep what it is given."""

from __future__ import annotations


class LedgerUnavailable(Exception):
    """The ledger database cannot be written or read right now."""


class UnstorableValue(Exception):
    """The database refused a value itself (a NUL character, a key longer than the ledger
    keeps): sending the same again cannot succeed."""


def first_line(error: BaseException) -> str:
    """The first line of a database error's message, for logs and answers."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(error).__name__
