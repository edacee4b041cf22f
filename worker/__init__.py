"""contactsync's queue side: the Contacts API client and its sandbox, the ledger, the
rate limiter, the retry policy, dead letters, and the Celery app and tasks.

Nothing in this package imports :mod:`webhooks`; the arrow points the other way.
"""
