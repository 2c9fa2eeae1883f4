"""A flat config section read as one of its parts (``serve_app.config_model``'s ``models:`` entry,
``serve_app.config_router``'s ``router:``). Pure: pydantic only."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

_Part = TypeVar("_Part", bound=BaseModel)


def part_of(section: BaseModel, part: type[_Part]) -> _Part:
    """``part``'s fields of ``section``, as a ``part``: its own checks run again on the values, and
    nested sections go over as they are (pydantic does not re-validate model instances)."""
    return part.model_validate({name: getattr(section, name) for name in part.model_fields})
