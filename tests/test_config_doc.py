"""The configuration's documentation: generated from the schemas, complete, and committed up to date."""

from __future__ import annotations

from container_src.config import SCHEMAS
from container_src.config_doc import keys, markdown, usage
from tests.conftest import ROOT


def test_configuration_page_is_up_to_date() -> None:
    """README: "regenerate docs/configuration.md from the schemas"."""
    page = ROOT / "docs" / "configuration.md"
    assert page.is_file() and page.read_text() == markdown(), (
        "docs/configuration.md is stale: run `make docs` and commit it"
    )


def test_every_key_is_documented_with_a_summary_line() -> None:
    """docs/configuration.md: "whose field docstrings are the text below"."""
    for mode, schema in SCHEMAS.items():
        for key in keys(schema):
            assert key.doc, f"{mode}: {key.name} has no docstring under its field in container_src/config.py"
            assert key.summary.endswith((".", ")")) and len(key.summary) <= 116, (mode, key.name, key.summary)


def test_the_page_has_every_key_its_full_text_and_the_precedence() -> None:
    """README: "has each with its type, default and meaning, and the precedence in full"."""
    page = markdown()
    for schema in SCHEMAS.values():
        for key in keys(schema):
            assert f"| `{key.name}` |" in page
    assert "a checkpoint's data position includes the batches prepared ahead" in page  # past the first line
    assert "`int \\| None`" in page  # a pipe in a type does not break the table
    for source in ("defaults below", "`--preset NAME`", "`--config FILE`", "hyperparameters.json", "`--key value`"):
        assert source in page
    assert page.index("`--preset NAME`") < page.index("hyperparameters.json") < page.index("`--key value`")
    assert "- `smoke`: " in page and '`device="cpu"`' in page


def test_help_shows_first_lines_only() -> None:
    """docs/configuration.md: "MODE --help` lists a mode's keys with the first line of each"."""
    text = usage("train")
    assert "Training batches prepared ahead in a background thread, overlapping the SAE step; 0 turns it off." in text
    assert "a resumed run skips" not in text
    assert "--n_features" not in text and "--n_features" in usage(None)
