"""Contrasts: two selections of tokens whose features viz compares. A selection is a source (the prompts or the
stories), a filter on the prompts' columns and a part of each prompt (question, response or the whole prompt).

The `contrasts` key holds user contrasts, separated by `;`:

    NAME: SELECTION vs SELECTION
    SELECTION = space-separated terms: `stories`, `part=question|response|prompt`, `COLUMN=V1,V2`, `COLUMN!=V1,V2`
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from container_src.config import ConfigError
from container_src.data import NO_CATEGORY

if TYPE_CHECKING:
    from datasets import Dataset

PARTS = ("prompt", "question", "response")
STORIES_SOURCE = "stories"
NOT_FILTERABLE = {"text", "question_start", "question_end", "response_start", "response_end"}


@dataclass(frozen=True)
class Filter:
    """Keep the prompts whose ``column`` is one of ``values`` (or none of them, when ``negate``)."""

    column: str
    values: tuple[str, ...]
    negate: bool = False

    def __str__(self) -> str:
        return f"{self.column}{'!=' if self.negate else '='}{','.join(self.values)}"


@dataclass(frozen=True)
class Selection:
    """One side of a contrast: the stories, or the prompts that pass every filter, counted on one part."""

    source: str = "prompts"
    filters: tuple[Filter, ...] = ()
    part: str = "prompt"

    def __str__(self) -> str:
        if self.source == STORIES_SOURCE:
            return STORIES_SOURCE
        terms = [str(f) for f in self.filters] + ([f"part={self.part}"] if self.part != "prompt" else [])
        return " ".join(terms) or "all prompts"


@dataclass(frozen=True)
class Contrast:
    """Side ``a`` against the reference side ``b``; ``user``: named in the configuration, not a default."""

    name: str
    a: Selection
    b: Selection
    user: bool = field(default=False, compare=False)


def value_text(value: Any) -> str:
    """A column value as a filter names it: booleans as true/false, empty as ``(none)``."""
    if value is None or value == "":
        return NO_CATEGORY
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _parse_selection(text: str, where: str) -> Selection:
    try:
        terms = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"contrasts: {where}: {exc}") from None
    if not terms:
        raise ConfigError(f"contrasts: {where}: an empty side; name `stories` or at least one term like part=response")
    if terms == [STORIES_SOURCE] or terms == ["source=stories"]:
        return Selection(source=STORIES_SOURCE)
    part, filters = "prompt", []
    for term in terms:
        negate = "!=" in term
        column, sep, values = term.partition("!=" if negate else "=")
        if not sep or not column or not values:
            raise ConfigError(
                f"contrasts: {where}: {term!r} is not a term; write COLUMN=VALUE[,VALUE], COLUMN!=VALUE, "
                f"part={'|'.join(PARTS)} or `stories`"
            )
        if column == "source":
            if values != "prompts":
                raise ConfigError(
                    f"contrasts: {where}: source={values!r}; the stories side is the single term `stories`"
                )
        elif column == "part":
            if negate or values not in PARTS:
                raise ConfigError(f"contrasts: {where}: {term!r}; part must be one of {', '.join(PARTS)}")
            part = values
        else:
            filters.append(Filter(column, tuple(v for v in values.split(",") if v), negate))
    return Selection("prompts", tuple(filters), part)


def parse(spec: str) -> list[Contrast]:
    """The user's contrasts from the `contrasts` key; a syntax error is a ConfigError naming the contrast."""
    contrasts: list[Contrast] = []
    for item in (s.strip() for s in spec.split(";")):
        if not item:
            continue
        name, colon, body = item.partition(":")
        name = name.strip()
        if not colon or not name:
            raise ConfigError(f"contrasts: {item!r} has no name; write NAME: SELECTION vs SELECTION")
        sides = body.split(" vs ")
        if len(sides) != 2:
            raise ConfigError(f"contrasts: {name!r} needs exactly one ` vs ` between its two selections")
        a = _parse_selection(sides[0], f"{name!r}, first side")
        b = _parse_selection(sides[1], f"{name!r}, second side")
        if a.source == STORIES_SOURCE:
            raise ConfigError(f"contrasts: {name!r}: the stories can only be the second (reference) side")
        if name in {c.name for c in contrasts}:
            raise ConfigError(f"contrasts: the name {name!r} is used twice")
        contrasts.append(Contrast(name, a, b, user=True))
    return contrasts


def column_values(prompts: Dataset) -> dict[str, list[str]]:
    """Each filterable column of the prompts and its values, as filters name them, sorted."""
    out = {}
    for column in prompts.column_names:
        if column in NOT_FILTERABLE:
            continue
        out[column] = sorted({value_text(v) for v in prompts[column]})
    return out


def check_against(contrasts: list[Contrast], present: dict[str, list[str]]) -> None:
    """Every column and value the contrasts name must exist in the prompts; the error lists those present."""
    for contrast in contrasts:
        for side in (contrast.a, contrast.b):
            for f in side.filters:
                if f.column not in present:
                    listing = "; ".join(f"{c}: {', '.join(v[:20])}" for c, v in present.items() if c != "id")
                    raise ConfigError(
                        f"contrasts: {contrast.name!r} filters on column {f.column!r}, which the prompts lack; "
                        f"columns present (with values): {listing or 'none'}"
                    )
                missing = [v for v in f.values if v not in present[f.column]]
                if missing:
                    shown, absent = ", ".join(present[f.column][:50]), ", ".join(map(repr, missing))
                    raise ConfigError(
                        f"contrasts: {contrast.name!r}: column {f.column!r} has no value {absent}; "
                        f"values present: {shown}"
                    )


def defaults(present: dict[str, list[str]], spans_known: dict[str, bool]) -> list[Contrast]:
    """prompts vs stories (the topic baseline); each category vs the other categories; censored vs uncensored
    where both exist; response vs question, overall and per category, where the parts are known."""
    prompts = Selection()
    out = [Contrast("prompts_vs_stories", prompts, Selection(source=STORIES_SOURCE))]
    categories = present.get("category", [])
    if len(categories) > 1:
        for c in categories:
            out.append(
                Contrast(
                    f"category[{c}]_vs_others",
                    Selection(filters=(Filter("category", (c,)),)),
                    Selection(filters=(Filter("category", (c,), negate=True),)),
                )
            )
    if {"true", "false"} <= set(present.get("censored", [])):
        out.append(
            Contrast(
                "censored_vs_uncensored",
                Selection(filters=(Filter("censored", ("true",)),)),
                Selection(filters=(Filter("censored", ("false",)),)),
            )
        )
    if spans_known["question"] and spans_known["response"]:
        out.append(Contrast("response_vs_question", Selection(part="response"), Selection(part="question")))
        for c in categories if len(categories) > 1 else []:
            only = (Filter("category", (c,)),)
            out.append(
                Contrast(
                    f"response_vs_question[{c}]",
                    Selection(filters=only, part="response"),
                    Selection(filters=only, part="question"),
                )
            )
    return out


def members(selection: Selection, rows: list[dict[str, str]]) -> list[bool]:
    """Which prompts (``rows``: each prompt's column values as filters name them) a prompts selection takes."""
    keep = []
    for row in rows:
        ok = True
        for f in selection.filters:
            inside = row[f.column] in f.values
            ok = ok and (inside != f.negate)
        keep.append(ok)
    return keep
