"""Every test names the documented sentence it pins, and that sentence is still in its page (docs/development.md,
"Tests"), so a change to the README or a docs page shows which tests to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted((ROOT / "tests").glob("test_*.py"))
KINDS = ("README", "docs/", "Pins:", "Internal:")
# the page, any words, then a quote that opens on the first line and may run over the next ones
QUOTE = re.compile(r'(README|docs/[\w./-]+?\.md)\b[^"\n]*"([^"]*)"')
ELISION = " ... "


def normalised(text: str) -> str:
    """Internal: whitespace collapsed, since the docs wrap their lines where a docstring does not."""
    return " ".join(text.split())


def page_text(page: str) -> str | None:
    path = ROOT / ("README.md" if page == "README" else page)
    return normalised(path.read_text(encoding="utf-8")) if path.is_file() else None


def quoted_in_order(quote: str, text: str) -> bool:
    """Internal: each part of a quote elided with " ... " is in the text, in order."""
    at = 0
    for part in normalised(quote).split(normalised(ELISION)):
        found = text.find(part.strip(), at)
        if found < 0:
            return False
        at = found + len(part.strip())
    return True


def collect_tests(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Internal: the test functions of a file, at module level and in its Test classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.stmt] = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            nodes.extend(node.body)
    return [n for n in nodes if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")]


def problems(path: Path) -> list[str]:
    """Internal: one line per test of the file whose docstring does not name, or no longer finds, its sentence."""
    found: list[str] = []
    for fn in collect_tests(path):
        doc = ast.get_docstring(fn) or ""
        first = doc.split("\n", 1)[0]
        where = f"{path.name}::{fn.name}"
        if not first.startswith(KINDS):
            found.append(f"{where}: the first line of its docstring starts with none of {', '.join(KINDS)}")
            continue
        if not first.startswith(("README", "docs/")):
            continue
        match = QUOTE.match(doc)
        if match is None:
            found.append(f"{where}: the first line names a page but quotes no sentence of it")
            continue
        page, quote = match.groups()
        text = page_text(page)
        if text is None:
            found.append(f"{where}: {page} does not exist")
        elif not quote.strip() or not quoted_in_order(quote, text):
            found.append(f'{where}: "{normalised(quote)}" is not in {page}')
    return found


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_every_test_names_a_documented_sentence_that_is_still_there(path: Path) -> None:
    """docs/development.md: "a change to the docs shows which tests to read"; each test's first docstring line
    quotes its sentence (README or docs/), or says `Pins:` or `Internal:`."""
    assert not problems(path), "\n".join(problems(path))


def test_the_checker_finds_a_missing_quote_and_a_missing_kind(tmp_path: Path) -> None:
    """Internal: the checker itself fails on a quote not in its page, an unknown page and an unmarked test."""
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "def test_good():\n"
        '    """README: "make test    # the test suite (CPU,\n    offline)"."""\n'
        "def test_elided():\n"
        '    """README: "It checks the configuration ... before loading anything heavy"."""\n'
        "def test_gone():\n"
        '    """README: "a sentence the README never had"."""\n'
        "def test_nowhere():\n"
        '    """docs/nowhere.md: "anything"."""\n'
        "def test_bare():\n"
        '    """Checks something."""\n'
        "class TestGroup:\n"
        "    def test_inner(self):\n"
        '        """Pins: a promise (not in the docs)."""\n'
    )
    assert problems(sample) == [
        'test_sample.py::test_gone: "a sentence the README never had" is not in README',
        "test_sample.py::test_nowhere: docs/nowhere.md does not exist",
        "test_sample.py::test_bare: the first line of its docstring starts with none of "
        + "README, docs/, Pins:, Internal:",
    ]
