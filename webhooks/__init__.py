"""contactsync's HTTP edge: the Flask app factory, the webhook receiver, one module per
source, signature checks, and the health endpoints. Imports :mod:`worker`, never the reverse.
"""

from webhooks.app import create_app

__all__ = ["create_app"]
