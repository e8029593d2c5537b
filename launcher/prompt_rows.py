"""From Chroma records to prompt rows: which metadata key feeds which column, the ``text`` template, why a row is
skipped, and the fingerprint of what is exported.

Two shapes of the same collection exist and both map without flags: the current one (``response``,
``censorship_category``, ``subject``, the question as the document) and an older one (``response_text``,
``kind_of_censorship``, ``model``, and the question's embedding written out as the document).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from container_src.data import NO_CATEGORY
from launcher.errors import LauncherError

DOCUMENT = "document"  # as a key: the record's Chroma document rather than a metadata key

# Output column -> keys tried in order; the first that holds a usable value wins. --field NAME=KEY replaces a list.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "question": ("question", DOCUMENT),
    "response": ("response", "response_text"),
    "category": ("censorship_category", "kind_of_censorship"),
    "censored": ("censored",),
    "subject": ("subject", "model"),
    "timestamp": ("timestamp",),
    "thought": ("thought",),
}
REQUIRED_FIELDS = ("question", "response")
TEXT_FIELDS = ("question", "response", "category", "subject", "thought")
COLUMNS = ("id", "text", "question", "response", "category", "censored", "subject", "timestamp")
TEMPLATE_FIELDS = ("question", "response", "thought", "category", "subject")

# Skip reasons, as they appear in the summary and the manifest.
NO_QUESTION = "empty question"
NO_RESPONSE = "no response"
DUPLICATE = "duplicate question"
EMPTY_TEXT = "empty text"  # a --template that renders to nothing for the row

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(nan|inf|infinity)", re.IGNORECASE)
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class Record:
    """One Chroma row as read: its id, document and metadata."""

    id: str
    document: str | None
    metadata: Mapping[str, Any]


@dataclass
class FieldMapping:
    """Which keys feed which column, and how ``text`` is made."""

    fields: dict[str, tuple[str, ...]]
    overridden: frozenset[str] = frozenset()
    template: str | None = None  # None: question, blank line, (thought, blank line,) response
    with_thought: bool = False
    keep_duplicates: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (*COLUMNS, "thought") if self.with_thought else COLUMNS


@dataclass
class Built:
    rows: list[dict[str, Any]]
    skipped: Counter[str] = field(default_factory=Counter)
    unreadable_censored: int = 0


def parse_field_overrides(pairs: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """``--field NAME=KEY`` flags applied to the defaults; an unknown NAME or a malformed pair is an error."""
    fields = dict(DEFAULT_FIELDS)
    overridden = set()
    for pair in pairs:
        name, sep, key = (part.strip() for part in pair.partition("="))
        if not sep or not name or not key:
            raise LauncherError(f"--field {pair!r}: expected NAME=KEY, for example --field response=answer_text")
        if name not in fields:
            raise LauncherError(
                f"--field {pair!r}: unknown column {name!r}; columns that can be mapped: {', '.join(fields)}"
            )
        fields[name] = (key,)
        overridden.add(name)
    return fields, frozenset(overridden)


def check_template(template: str) -> str:
    """The template with ``\\n``/``\\t`` escapes (as typed in a shell) turned into characters; only named fields of
    TEMPLATE_FIELDS are allowed, so a template cannot reach attributes or positions."""
    template = template.replace("\\n", "\n").replace("\\t", "\t")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise LauncherError(f"--template: {exc} (write a literal brace as {{{{ or }}}})") from None
    bad = [name for name in names if name not in TEMPLATE_FIELDS]
    if bad:
        raise LauncherError(
            f"--template: unknown field(s) {', '.join(bad)}; a template may use "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        )
    if not names:
        raise LauncherError("--template has no {field}: every row would get the same text")
    return template


def is_number_list(text: str) -> bool:
    """True for an embedding written out as text: ``[0.1, -2e-3, …]``, ``0.1 0.2``, numpy's ``[ 0.1 … 0.3]``."""
    stripped = text.strip()
    bracketed = stripped[:1] in "[(" and stripped[-1:] in "])"
    tokens = [t for t in re.split(r"[\s,]+", stripped.strip("[]()")) if t and t not in ("...", "…")]
    if not tokens or (len(tokens) < 2 and not bracketed):
        return False
    return all(_NUMBER.fullmatch(t) for t in tokens)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, list | tuple):  # Chroma takes lists as metadata values: ["refusal", "whataboutism"]
        return ", ".join(t for t in map(_text, value) if t) or None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value).strip() or None


def _censored(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def _timestamp(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        seconds = float(value)
        for _ in range(3):  # epoch seconds, or milli-, micro- or nanoseconds
            if abs(seconds) <= 1e11:
                break
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return str(value)  # no date this can read: kept as written, never dropped
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text or None  # not a date this can read: kept as written, never dropped
    # One form for every row: ISO 8601 with a T, and UTC where the value names a zone (as epochs become). A value
    # without a zone says nothing about one, so none is invented.
    return (parsed.astimezone(UTC) if parsed.tzinfo else parsed).isoformat()


def _lookup(record: Record, key: str) -> Any:
    return record.document if key == DOCUMENT else record.metadata.get(key)


def _value(record: Record, name: str, keys: tuple[str, ...]) -> Any:
    convert = _censored if name == "censored" else _timestamp if name == "timestamp" else _text
    for key in keys:
        value = convert(_lookup(record, key))
        # Old records hold the question's embedding, written out as numbers, as their document: never text. Only the
        # document is checked; a metadata value such as a response "1989, 1990" is text.
        if key == DOCUMENT and isinstance(value, str) and is_number_list(value):
            continue
        if value is not None:
            return value
    return None


def available_keys(records: Iterable[Record]) -> set[str]:
    keys: set[str] = set()
    for record in records:
        keys.update(record.metadata)
        if record.document is not None:
            keys.add(DOCUMENT)
    return keys


def check_keys(mapping: FieldMapping, keys: set[str]) -> list[str]:
    """Errors for a mapped key that no row has (overrides, and the required columns); returns warnings for
    optional columns that no row can fill."""
    listing = ", ".join(sorted(keys)) or "no keys at all"
    warnings = []
    for name, wanted in mapping.fields.items():
        if name == "thought" and not mapping.with_thought:
            continue
        if any(key in keys for key in wanted):
            continue
        which = f"key {wanted[0]!r}" if len(wanted) == 1 else f"any of the keys {', '.join(map(repr, wanted))}"
        if name in mapping.overridden or name in REQUIRED_FIELDS:
            raise LauncherError(
                f"no row has {which} for column {name!r}. The rows have: {listing}. "
                f"Map it with --field {name}=KEY ({DOCUMENT!r} is the row's document)."
            )
        warnings.append(f"no row has {which}: column {name!r} is empty (map it with --field {name}=KEY)")
    return warnings


def render_text(row: Mapping[str, Any], mapping: FieldMapping) -> str:
    if mapping.template is None:
        parts = [row["question"], row.get("thought") if mapping.with_thought else None, row["response"]]
        return "\n\n".join(p for p in parts if p)
    return mapping.template.format_map({name: row.get(name) or "" for name in TEMPLATE_FIELDS}).strip()


def build_rows(records: Sequence[Record], mapping: FieldMapping) -> Built:
    """Rows in id order; each record either becomes a row or is counted under one skip reason."""
    built = Built(rows=[])
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: r.id):
        values = {name: _value(record, name, keys) for name, keys in mapping.fields.items()}
        if values["question"] is None:
            built.skipped[NO_QUESTION] += 1
            continue
        if values["response"] is None:
            built.skipped[NO_RESPONSE] += 1
            continue
        dedup_key = " ".join(values["question"].split()).casefold()
        if dedup_key in seen and not mapping.keep_duplicates:
            built.skipped[DUPLICATE] += 1
            continue
        row = {"id": record.id, **values}
        row["text"] = render_text(row, mapping)
        if not row["text"]:
            built.skipped[EMPTY_TEXT] += 1
            continue
        seen.add(dedup_key)
        if values["censored"] is None and any(_lookup(record, k) is not None for k in mapping.fields["censored"]):
            built.unreadable_censored += 1
        built.rows.append({column: row[column] for column in mapping.columns})
    return built


def fingerprint(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """sha256 of the exported content: the column list, then each row as canonical JSON, in export (id) order."""
    digest = hashlib.sha256(json.dumps(list(columns)).encode() + b"\n")
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def category_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(row["category"] or NO_CATEGORY for row in rows)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
