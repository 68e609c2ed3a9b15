"""Errors the pipeline raises on purpose, each with one message a person can act on."""

from __future__ import annotations


class UserInputError(ValueError):
    """A mistake in what the user asked for (unknown symbol, start after end, bad date...).

    The message alone says what is wrong and what would be accepted; the CLI prints it without a
    traceback. It subclasses `ValueError` so generic callers that catch bad values still catch it.
    """


class SourceError(RuntimeError):
    """A data source failed for reasons outside the user's request (HTTP errors after all retries,
    unreadable files). The message names the source and the request, never credentials."""
