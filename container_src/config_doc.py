"""The configuration's documentation, generated from the schemas: the keys in ``--help`` and docs/configuration.md.

Each key's type and default come from its dataclass field, its meaning from the docstring under the field (read
from config.py's source, since Python keeps no such docstrings at runtime): ``--help`` shows the first line,
the page the whole text.

    python -m container_src.config_doc > docs/configuration.md   # what `make docs` runs
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import sys
import textwrap
from dataclasses import dataclass

from container_src.config import SCHEMAS, RunConfig
from container_src.config_sources import list_presets, load_preset

PRECEDENCE = "defaults < --preset NAME or --config FILE < hyperparameters.json < --key value flags"
SHARED_TITLE = "Keys every mode takes"


@dataclass(frozen=True)
class KeyDoc:
    """One configuration key as the documentation shows it."""

    name: str
    type: str
    default: str
    doc: str
    """The field's docstring, dedented; its first line is the summary."""

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings under the fields ``cls`` itself declares, by field name."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    docs: dict[str, str] = {}
    if not isinstance(node, ast.ClassDef):
        return docs
    for stmt, after in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _declared_by(schema: type) -> dict[str, type]:
    """Each field of ``schema`` with the class that declares it."""
    owners: dict[str, type] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            owners.update(dict.fromkeys(inspect.get_annotations(cls), cls))
    return owners


def keys(schema: type, own_only: bool = False) -> list[KeyDoc]:
    """The keys of ``schema`` in declaration order (inherited first); only those it declares itself with
    ``own_only``."""
    owners = _declared_by(schema)
    out = []
    for f in dataclasses.fields(schema):
        if own_only and owners[f.name] is not schema:
            continue
        type_text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        doc = _field_docs(owners[f.name]).get(f.name, "")
        out.append(KeyDoc(name=f.name, type=type_text, default=repr(f.default), doc=doc))
    return out


def usage(mode: str | None = None) -> str:
    """The keys for ``--help``: those of ``mode``, or of every mode when it is None or not a mode."""
    modes = [mode] if mode in SCHEMAS else list(SCHEMAS)
    lines = [
        f"modes: {', '.join(SCHEMAS)}",
        f"presets: {', '.join(list_presets())}",
        f"precedence: {PRECEDENCE}",
        "Each key is a --key value flag or a hyperparameter; full descriptions: docs/configuration.md",
    ]
    for name in modes:
        lines.append(f"\n{name} keys (type = default):")
        for key in keys(SCHEMAS[name]):
            lines += [f"  --{key.name}: {key.type} = {key.default}", f"      {key.summary}"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(rows: list[KeyDoc]) -> list[str]:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k.name}` | `{_cell(k.type)}` | `{_cell(k.default)}` | {_cell(k.doc)} |" for k in rows]
    return lines


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _mode_section(mode: str, schema: type, titles: dict[type, str]) -> list[str]:
    lines = [f"## {mode}", "", inspect.cleandoc(schema.__doc__ or ""), ""]
    bases = [titles[cls] for cls in schema.__mro__[1:] if cls in titles]
    if bases:
        links = ", ".join(f"[{title}](#{_anchor(title)})" for title in bases)
        lines += [f"It also takes the keys of: {links}.", ""]
    return [*lines, *_table(keys(schema, own_only=True)), ""]


def markdown() -> str:
    """docs/configuration.md: the sources and their precedence, the presets, and every mode's keys."""
    presets = [
        f"- `{name}`: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in load_preset(name).items())
        for name in list_presets()
    ]
    titles: dict[type, str] = {RunConfig: SHARED_TITLE}
    titles.update({schema: mode for mode, schema in SCHEMAS.items()})
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from container_src/config.py by `make docs`; edit the field docstrings there, not this"
        " page. -->",
        "",
        f"Each mode ({', '.join(SCHEMAS)}) has its own keys: one dataclass each in `container_src/config.py`, whose"
        " field docstrings are the text below. `python -m container_src MODE --help` lists a mode's keys with the"
        " first line of each.",
        "",
        "## Sources and precedence",
        "",
        "Lowest precedence first; a later source overrides an earlier one key by key:",
        "",
        "1. the defaults below (the seed plan);",
        "2. a preset (`--preset NAME` or a `preset` hyperparameter, a file in `container_src/presets/`), or a JSON"
        " file of key: value pairs (`--config FILE` or a `config` hyperparameter), the file over the preset;",
        "3. SageMaker's `input/config/hyperparameters.json` (all strings, each converted to its key's type);",
        "4. `--key value` or `--key=value` flags (dashes in a key read as underscores).",
        "",
        "`mode`, `preset` and `config` are read only from the flags and the hyperparameters; `--mode` beats a `mode`"
        " hyperparameter, which beats the MODE on the command line. An unknown key, a wrong type or an impossible"
        " combination stops the run before any model is loaded, with a message naming the key. Secrets never go in"
        " the configuration: the W&B key comes from `WANDB_API_KEY` locally, or from the Secrets Manager secret named"
        " by `WANDB_SECRET_ID` in a job.",
        "",
        "## Presets",
        "",
        *presets,
        "",
        f"## {SHARED_TITLE}",
        "",
        *_table(keys(RunConfig)),
        "",
    ]
    for mode, schema in SCHEMAS.items():
        lines += _mode_section(mode, schema, titles)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
