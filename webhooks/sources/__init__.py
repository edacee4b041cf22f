"""Webhook sources: one module per kind of sender.

``generic`` is contactsync's own event format (Standard Webhooks). Every other module
follows :mod:`webhooks.sources.base`: it verifies its vendor's signature and flattens the
payload into records; mapping and enqueueing are shared (:mod:`webhooks.mapping`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import cast

from webhooks.sources.base import SourceModule

_NOT_KINDS = frozenset({"base", "generic"})


def kinds() -> list[str]:
    """Every vendor kind a source may be (besides ``generic``)."""
    return sorted(
        info.name for info in pkgutil.iter_modules(__path__) if info.name not in _NOT_KINDS
    )


def module_for(kind: str) -> SourceModule:
    """The module of a vendor kind; ``ValueError`` naming the known kinds otherwise."""
    if kind in _NOT_KINDS or kind not in kinds():
        known = ", ".join(["generic", *kinds()])
        raise ValueError(f"unknown source kind {kind!r} (known: {known})")
    return cast(SourceModule, importlib.import_module(f"webhooks.sources.{kind}"))
