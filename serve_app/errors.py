"""The base of serve_app's own errors, so that a caller can tell them from library failures with
one ``except ServeAppError``. Each error also keeps the builtin base its callers already catch
(``ValueError`` for bad input, ``RuntimeError`` for a failed operation)."""

from __future__ import annotations


class ServeAppError(Exception):
    """An error serve_app raises on purpose; the message says what went wrong and what to do."""
