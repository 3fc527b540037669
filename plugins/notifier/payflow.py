"""Helpers for payflow:plugin outcomes, so a handler reads as what it decides:
``proceed()``, ``drop(reason)``, ``forward(upstream, body)``, ``header(name, value)``.
Keep this file next to your ``app.py``: componentize-py bundles it with the plugin."""

from typing import Iterable, Optional

from wit_world.imports import types


def header(name: str, value: str) -> types.Header:
    """A header for the delivery (or for one forward)."""
    return types.Header(name, value)


def forward(upstream: str, body: Optional[bytes] = None, headers: Iterable[types.Header] = ()) -> types.Forward:
    """An extra delivery to a configured upstream of the same merchant; ``body`` replaces the
    event's for it only."""
    return types.Forward(upstream, body, list(headers))


def proceed(
    body: Optional[bytes] = None,
    headers: Iterable[types.Header] = (),
    forwards: Iterable[types.Forward] = (),
    tags: Iterable[str] = (),
) -> types.Outcome:
    """The event continues: to the next plugin, then the endpoint's upstream (with ``body`` if
    given, plus ``headers``), and to each of ``forwards``."""
    return types.Outcome(types.Action_Continue(), body, list(headers), list(forwards), list(tags))


def drop(reason: str, tags: Iterable[str] = ()) -> types.Outcome:
    """The event stops here: nothing is delivered; ``reason`` is kept with it."""
    return types.Outcome(types.Action_Drop(reason), None, [], [], list(tags))
