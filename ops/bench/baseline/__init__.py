"""The obvious implementation, to measure contactsync against (issue 6, item 4).

What a competent developer writes with Flask and Celery in an afternoon, from the same
event format (docs/events.md) and the same Contacts API (docs/contacts-api.md), and nothing
more: :mod:`.app` takes an event and queues one task per event; :mod:`.tasks` applies it
with plain ``requests``, under Celery's ``rate_limit`` and ``autoretry_for`` with
exponential backoff. No ledger, no ordering per contact, no shared limiter. It imports
nothing from contactsync.

Run it (the benchmark does): ``celery -A ops.bench.baseline.tasks worker`` with
``BASELINE_BROKER_URL``, ``BASELINE_API_URL``, ``BASELINE_API_TOKEN`` and
``BASELINE_RATE_LIMIT`` (a Celery rate such as ``200/m``: the channel's limit) in the
environment, and the Flask app from :func:`.app.create_app`.
"""
