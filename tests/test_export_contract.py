"""The prompt export's documented contract, one promise per test, each written to fail when a one-line change breaks
it: the committed sample export reproduced exactly, which key wins for each column, what the summary counts, and
every check that runs before the store is opened. Real chromadb stores throughout; no export trains anything."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from container_src.data import NO_CATEGORY
from launcher.chroma_source import Source, persistent_client, read_records
from launcher.errors import LauncherError
from launcher.export_prompts import parse_args
from launcher.prompt_rows import (
    DEFAULT_FIELDS,
    FieldMapping,
    Record,
    build_rows,
    category_counts,
    check_keys,
    check_template,
    is_number_list,
    parse_field_overrides,
    render_text,
)
from tests.conftest import ROOT
from tests.test_export_prompts import (
    COLLECTION,
    MESSY_ROWS,
    SNAPSHOT,
    _RecordingProxy,
    add_rows,
    export,
    logged,
    make_store,
    manifest_of,
    rows_of,
)

SAMPLE = ROOT / "data" / "sample_prompts"


def default_rows(records: list[Record], **options: Any) -> Any:
    return build_rows(records, FieldMapping(fields=dict(DEFAULT_FIELDS), **options))


def test_the_snapshot_exports_to_the_committed_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "`data/sample_prompts/` is this tool's export of the 2025-07 snapshot"
    The same manifest (key order, category order, fingerprint, columns, fields), the same rows, the same chart."""
    out = tmp_path / "prompts"
    assert export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(out))[0] == 0
    fresh, sample = manifest_of(out), manifest_of(SAMPLE)
    assert fresh.pop("source") == str(SNAPSHOT) and sample.pop("source")
    exported_at = datetime.fromisoformat(fresh.pop("exported_at"))
    assert exported_at.utcoffset() is not None and exported_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert exported_at.microsecond == 0
    sample.pop("exported_at")
    assert list(fresh.items()) == list(sample.items())  # dict order too: categories by count, then name
    assert list(fresh["categories"]) == ["official narrative", "refusal"]
    assert rows_of(out) == rows_of(SAMPLE)
    assert (out / "categories.png").read_bytes() == (SAMPLE / "categories.png").read_bytes()
    assert out.stat().st_mode & 0o777 == 0o755  # an ordinary folder, not mkdtemp's private one


def test_fingerprint_is_sha256_of_the_rows_as_canonical_json_in_id_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/export.md: "`fingerprint` (sha256 of the exported rows as canonical JSON, in id order"
    Recomputed from the dataset on disk: the column list, then each row as sorted-key compact JSON, one a line."""
    out = tmp_path / "out"
    store = make_store(tmp_path / "store", [*MESSY_ROWS, ("g1", "¿Qué pasó?", {"response": "Nada.", "subject": "m"})])
    assert export(capsys, "--chroma-path", str(store), "--out", str(out), "--with-thought")[0] == 0
    manifest = manifest_of(out)
    rows = sorted(rows_of(out).values(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == ["a1", "b1", "c1", "g1"]
    digest = hashlib.sha256(json.dumps(manifest["columns"]).encode() + b"\n")
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    assert manifest["fingerprint"] == digest.hexdigest()


def test_the_summary_counts_rows_and_categories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "The summary on stdout gives rows read, exported and skipped per reason,
    and the category counts" """
    store = make_store(tmp_path / "store", MESSY_ROWS)
    out = tmp_path / "out"
    rc, stdout = export(capsys, "--chroma-path", str(store), "--out", str(out))
    assert rc == 0
    lines = [line.rsplit(None, 1) for line in stdout.splitlines() if line.strip() != "categories"]
    table = [(label.strip(), value) for label, value in lines]
    assert table == [
        ("rows read", "8"),
        ("exported", "3"),
        ("skipped", "5"),
        ("empty question", "2"),
        ("no response", "2"),
        ("duplicate question", "1"),
        ("refusal", "2"),
        ("official narrative", "1"),
        ("fingerprint", manifest_of(out)["fingerprint"]),
        ("written to", str(out)),
    ]


def test_each_column_reads_the_first_key_a_row_fills() -> None:
    """docs/export.md: "Each column reads the first of these keys that a row fills" """
    both = {
        "question": "Meta question?",
        "response": "New response.",
        "response_text": "Old response.",
        "censorship_category": "new category",
        "kind_of_censorship": "old category",
        "subject": "new-model",
        "model": "old-model",
    }
    second = {"response": " ", "response_text": "Old only.", "kind_of_censorship": "old", "model": "m-old"}
    built = default_rows([Record("a", "Document question?", both), Record("b", "Second?", second)])
    first, other = built.rows
    assert (first["question"], first["response"], first["category"], first["subject"]) == (
        "Meta question?",
        "New response.",
        "new category",
        "new-model",
    )
    assert (other["question"], other["response"], other["category"], other["subject"]) == (
        "Second?",
        "Old only.",
        "old",
        "m-old",
    )


def test_censored_accepts_booleans_zero_one_and_yes_no() -> None:
    """docs/export.md: "`censored` accepts booleans, 0/1 and yes/no"
    Anything else is left empty and counted, so the export can warn about it."""
    values: dict[str, Any] = {
        "t": True,
        "f": False,
        "one": 1,
        "zero": 0,
        "one-float": 1.0,
        "yes": " Yes ",
        "no": "no",
        "true": "TRUE",
        "false": "false",
        "y": "y",
        "n": "N",
        "one-text": "1",
        "zero-text": "0",
        "two": 2,
        "maybe": "maybe",
    }
    records = [Record(key, None, {"question": key, "response": "A.", "censored": v}) for key, v in values.items()]
    records.append(Record("absent", None, {"question": "absent", "response": "A."}))
    built = default_rows(records)
    assert {row["id"]: row["censored"] for row in built.rows} == {
        "t": True,
        "f": False,
        "one": True,
        "zero": False,
        "one-float": True,
        "yes": True,
        "no": False,
        "true": True,
        "false": False,
        "y": True,
        "n": False,
        "one-text": True,
        "zero-text": False,
        "two": None,
        "maybe": None,
        "absent": None,
    }
    assert built.unreadable_censored == 2  # "two" and "maybe"; a row without the key is not unreadable


def test_a_document_of_numbers_is_an_embedding_and_one_number_is_text() -> None:
    """docs/export.md: "A document that is a list of numbers (`[0.01, -0.2, …]`, an old record's
    embedding) is never used as text" """
    embeddings = ["[0.5]", "(1, 2)", "0.1 0.2", "0.1,-2e-3", "[nan, inf, -Infinity]", "[ 0.1 … 0.3]", "[.5, +3.]"]
    texts = ["1989", "42?", "[]", "", "What is 1 2?", "[0.1, x]", "1989 and 1990"]
    assert [is_number_list(t) for t in embeddings] == [True] * len(embeddings)
    assert [is_number_list(t) for t in texts] == [False] * len(texts)
    built = default_rows([Record("a", "1989", {"response": "A year."}), Record("b", "0.1 0.2", {"response": "B."})])
    assert [row["question"] for row in built.rows] == ["1989"]
    assert built.skipped == {"empty question": 1}


def test_duplicates_keep_the_smaller_id_unless_kept() -> None:
    """docs/export.md: "as a row with a smaller id; `--keep-duplicates` keeps them"
    Records arrive in any order; rows come out in id order."""
    records = [
        Record("c", None, {"question": "Other?", "response": "C."}),
        Record("b", None, {"question": "  SAME\tquestion? ", "response": "B."}),
        Record("a", None, {"question": "same question?", "response": "A."}),
    ]
    built = default_rows(records)
    assert [(row["id"], row["response"]) for row in built.rows] == [("a", "A."), ("c", "C.")]
    assert built.skipped == {"duplicate question": 1}
    kept = default_rows(records, keep_duplicates=True)
    assert [row["id"] for row in kept.rows] == ["a", "b", "c"] and not kept.skipped


def test_missing_keys_errors_and_warnings_say_what_to_map() -> None:
    """docs/export.md: "a mapped key that no row has is an error that lists the keys the rows do have" """
    mapping = FieldMapping(fields=dict(DEFAULT_FIELDS))
    with pytest.raises(LauncherError) as raised:
        check_keys(mapping, {"response", "subject"})
    assert str(raised.value) == (
        "no row has any of the keys 'question', 'document' for column 'question'. The rows have: response, subject. "
        "Map it with --field question=KEY ('document' is the row's document)."
    )
    with pytest.raises(LauncherError, match=r"The rows have: no keys at all\."):
        check_keys(mapping, set())
    full = {"question", "response", "censorship_category", "censored", "subject", "timestamp"}
    assert check_keys(mapping, full) == []  # the thought is not asked for: no warning about it
    assert check_keys(mapping, full - {"subject", "censored"}) == [
        "no row has key 'censored': column 'censored' is empty (map it with --field censored=KEY)",
        "no row has any of the keys 'subject', 'model': column 'subject' is empty (map it with --field subject=KEY)",
    ]
    thought = FieldMapping(fields=dict(DEFAULT_FIELDS), with_thought=True)
    assert check_keys(thought, full) == [
        "no row has key 'thought': column 'thought' is empty (map it with --field thought=KEY)"
    ]


def test_a_template_may_use_all_five_fields() -> None:
    """docs/export.md: "from `{question}`, `{response}`, `{thought}`, `{category}` and `{subject}`" """
    template = check_template("  {question}|{response}|{thought}|{category}|{subject}\\t\\n")
    assert template == "  {question}|{response}|{thought}|{category}|{subject}\t\n"
    row = {"question": "Q?", "response": "A.", "thought": "T.", "category": "c", "subject": None}
    mapping = FieldMapping(fields=dict(DEFAULT_FIELDS), template=template)
    assert render_text(row, mapping) == "Q?|A.|T.|c|"  # surrounding blanks dropped, a missing value is empty
    with pytest.raises(LauncherError, match=r"--template: .*\(write a literal brace as \{\{ or \}\}\)"):
        check_template("{question")
    with pytest.raises(LauncherError, match=r"unknown field\(s\) 0, name; a template may use \{question\}"):
        check_template("{0} {name}")


def test_field_flags_name_the_columns_that_can_be_mapped() -> None:
    """docs/export.md: "`--field response=answer` reads a column from another key only" """
    fields, overridden = parse_field_overrides([" response = answer ", "category=topic"])
    assert fields == {**DEFAULT_FIELDS, "response": ("answer",), "category": ("topic",)}
    assert overridden == {"response", "category"}
    with pytest.raises(LauncherError) as raised:
        parse_field_overrides(["answer=x"])
    assert str(raised.value) == (
        "--field 'answer=x': unknown column 'answer'; "
        "columns that can be mapped: question, response, category, censored, subject, timestamp, thought"
    )
    for pair in ("=x", "response=", "response"):
        with pytest.raises(LauncherError, match="expected NAME=KEY"):
            parse_field_overrides([pair])


def test_categories_are_listed_by_count_then_name() -> None:
    """Pins: the manifest's and the summary's category order (most prompts first, ties by name, none as "(none)")."""
    rows = [{"category": c} for c in ["b", "a", None, "b", "c", "a", None, "", "b"]]
    assert list(category_counts(rows).items()) == [(NO_CATEGORY, 3), ("b", 3), ("a", 2), ("c", 1)]


BAD_FLAGS: dict[str, tuple[list[str], str]] = {
    "page size": (["--page-size", "0"], "--page-size 0: must be at least 1"),
    "s3 uri": (["--s3-uri", "bucket/prefix"], "'bucket/prefix' is not an S3 URI (s3://bucket/prefix)"),
    "missing store": (["--chroma-path", "{tmp}/nowhere"], "--chroma-path {tmp}/nowhere: no such directory"),
    "out is a file": (["--out", "{tmp}/file.txt"], "--out {tmp}/file.txt is a file; give a folder"),
    "out in store": (["--out", "{tmp}/store/out"], "--out {tmp}/store/out is inside the store {tmp}/store"),
    "port 0": (["--chroma-host", "127.0.0.1", "--chroma-port", "0"], "--chroma-port 0: not a TCP port (1-65535)"),
    "port 65536": (["--chroma-host", "h", "--chroma-port", "65536"], "--chroma-port 65536: not a TCP port (1-65535)"),
    "host path": (["--chroma-host", "chroma.example.org/api"], "give a host name, not a URL (--chroma-ssl for https)"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_flags_are_refused_before_the_store_is_opened(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "Errors end with status 2, a message that says what to do, and no output"
    The store holds no such collection: a flag checked only after opening it would meet that error first."""
    make_store(tmp_path / "store", [("r1", "Q?", {"response": "A."})], name="other_collection")
    (tmp_path / "file.txt").write_text("mine")
    flags, message = BAD_FLAGS[case]
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    source = [] if "--chroma-path" in flags or "--chroma-host" in flags else ["--chroma-path", str(tmp_path / "store")]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "out")]
    rc, stdout = export(capsys, *source, *out, *flags)
    assert (rc, stdout) == (2, "")
    assert message.replace("{tmp}", str(tmp_path)) in logged(caplog)
    assert "does not exist" not in logged(caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "store"]


def test_port_flags_belong_to_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "A server is reached on `--chroma-port` (default 8000, or 443 with `--chroma-ssl`)"
    and not with a local store, where a port means a mistake."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--chroma-path", str(tmp_path), "--chroma-ssl"])
    assert exited.value.code == 2
    assert "--chroma-port and --chroma-ssl go with --chroma-host, not --chroma-path" in capsys.readouterr().err
    defaults = parse_args(["--chroma-host", "h"])
    assert (defaults.out, defaults.page_size, defaults.collection) == (Path("data/prompts"), 1000, COLLECTION)
    assert Source(host="h", port=443, ssl=True).describe() == "https://h:443"
    assert Source(host="h").describe() == "http://h:8000"


@pytest.mark.parametrize(
    ("flags", "address"),
    [
        ([], "127.0.0.1:8000 (http)"),
        (["--chroma-ssl"], "127.0.0.1:443 (https)"),
        (["--chroma-port", "1"], "127.0.0.1:1 (http)"),
        (["--chroma-port", "65535"], "127.0.0.1:65535 (http)"),
    ],
)
def test_the_default_port_is_8000_or_443_with_ssl(
    flags: list[str], address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "A server is reached on `--chroma-port` (default 8000, or 443 with `--chroma-ssl`)"
    Nothing listens there on loopback: the refusal names the address tried."""
    rc, _ = export(capsys, "--chroma-host", "127.0.0.1", *flags, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert (
        f"cannot reach a Chroma server at {address}: is it running, and are --chroma-host, --chroma-port and "
        "--chroma-ssl right?"
    ) in logged(caplog)


def test_a_server_that_wants_a_token_says_to_set_one(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/export.md: "a server that cannot be reached (named by host:port) or refuses the token"
    No token in the environment: the message says to set CHROMADB_TOKEN (a loopback server answering 401)."""
    monkeypatch.delenv("CHROMADB_TOKEN", raising=False)
    _RecordingProxy.upstream, _RecordingProxy.accept, _RecordingProxy.seen = 0, "secret", []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = proxy.server_address[1]
    try:
        rc, _ = export(capsys, "--chroma-host", "127.0.0.1", "--chroma-port", str(port), "--out", str(tmp_path / "o"))
    finally:
        proxy.shutdown()
    assert rc == 2 and _RecordingProxy.seen and set(_RecordingProxy.seen) == {None}
    assert f"the Chroma server at 127.0.0.1:{port} refused the client" in logged(caplog)
    assert "(set CHROMADB_TOKEN if the server needs a token)" in logged(caplog)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("corrupt", "could not open the Chroma store {store}: "),
        ("no collections", f"collection {COLLECTION!r} does not exist in {{store}}. It has no collections. Choose one"),
        ("others", "does not exist in {store}. Collections there: alpha_prompts, zeta_prompts. Choose one with"),
    ],
)
def test_a_store_that_cannot_serve_the_collection_is_named(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "a collection that does not exist (the message lists those that do)" """
    store = tmp_path / "store"
    store.mkdir()
    if case == "corrupt":
        (store / "chroma.sqlite3").write_bytes(b"not a database " * 20)
    elif case == "no collections":
        persistent_client(store).close()
    else:  # created in reverse order: the message lists them by name
        make_store(store, [], name="zeta_prompts")
        make_store(store, [], name="alpha_prompts")
    rc, stdout = export(capsys, "--chroma-path", str(store), "--out", str(tmp_path / "out"))
    assert (rc, stdout) == (2, "")
    assert message.format(store=store) in logged(caplog)
    assert not (tmp_path / "out").exists()


def _reread_a(collection: Any) -> None:
    """Internal: delete row "a" and add it back, as a writer that rewrites a row would: the count stays 8."""
    got = collection.get(ids=["a"], include=["documents", "metadatas", "embeddings"])
    collection.delete(ids=["a"])
    collection.add(ids=["a"], documents=got["documents"], metadatas=got["metadatas"], embeddings=got["embeddings"])


class _WritesDuringRead:
    """A real collection; before the reader's second page, ``change`` writes to it (a second user, for example)."""

    def __init__(self, collection: Any, change: Callable[[Any], None]) -> None:
        self.collection, self.change, self.pages = collection, change, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)

    def get(self, **kwargs: Any) -> Any:
        self.pages += 1
        if self.pages == 2:
            self.change(self.collection)
        return self.collection.get(**kwargs)


def writes_during_read(collection: Any, change: Callable[[Any], None]) -> Any:
    """Internal: the collection as ``read_records`` sees it (duck-typed: the real one, with a writer beside it)."""
    return _WritesDuringRead(collection, change)


@pytest.mark.timeout(60)  # a reader that missed the end of a shrinking collection would loop forever: fail instead
def test_a_collection_that_changes_while_read_is_refused(tmp_path: Path) -> None:
    """docs/export.md: "the same collection gives the same fingerprint, whatever the source and page size"
    So a read that met a write is refused, not exported half old and half new; a page size of 1 reads every row."""
    rows = [(c, f"Question {c}?", {"response": "A."}) for c in "abcdefgh"]
    client = persistent_client(tmp_path / "store")

    def fresh(name: str) -> Any:
        collection = client.create_collection(name)
        add_rows(collection, rows)
        return collection

    def add(col: Any) -> None:
        col.add(ids=["z"], documents=["Question z?"], metadatas=[{"response": "A."}], embeddings=[[9.0, 1.0]])

    try:
        collection = fresh("steady")
        one_by_one = read_records(collection, "here", 1, progress=False)
        assert [r.id for r in one_by_one] == list("abcdefgh") and one_by_one == read_records(collection, "here", 1000)
        expected = {
            _reread_a: "(8 rows at the start, 8 at the end, 7 distinct ids read); run the export again when it is",
            add: "(8 rows at the start, 9 at the end, 9 distinct ids read)",
            lambda col: col.delete(ids=["a", "b", "c"]): "(8 rows at the start, 5 at the end, 5 distinct ids read)",
        }
        for number, (change, message) in enumerate(expected.items()):
            name = f"changing_{number}"
            with pytest.raises(LauncherError) as raised:
                read_records(writes_during_read(fresh(name), change), "here", 3, progress=False)
            assert str(raised.value).startswith(f"collection {name!r} changed while it was read {message}")
        dropped = writes_during_read(collection, lambda _: client.delete_collection("steady"))
        with pytest.raises(LauncherError, match="reading 'steady' from here failed after 3 rows: "):
            read_records(dropped, "here", 3, progress=False)
    finally:
        client.close()


def test_an_interrupted_export_is_tidied_by_the_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "an export killed mid-way is tidied, and the previous one put back, by the next export" """
    store = make_store(tmp_path / "store", [("r1", "Q?", {"response": "A."})])
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is a fine --out
    args = ["--chroma-path", str(store), "--out", str(out)]
    assert export(capsys, *args)[0] == 0
    first = manifest_of(out)["fingerprint"]
    (tmp_path / ".out.tmp-abc123").mkdir()  # killed while writing
    (tmp_path / ".out.tmp-abc123" / "data-00000-of-00001.arrow").write_bytes(b"half")
    (tmp_path / ".out.old").mkdir()  # killed after swapping in, before deleting the old one
    assert export(capsys, *args, "--with-thought")[0] == 0
    assert manifest_of(out)["fingerprint"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]


def test_warnings_and_the_manifest_record_what_was_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "`manifest.json` holds `source`, `collection`, `counts` ... `columns`, `fields`, `template`"
    And a column no row can fill, or a `censored` that is not true/false, is logged; a new --out's parents are made."""
    rows = [("r1", "Q?", {"response": "A.", "censored": "maybe"}), ("r2", "R?", {"response": "B.", "censored": "no"})]
    store = make_store(tmp_path / "store", rows)
    out = tmp_path / "a" / "b" / "prompts"
    args = ["--chroma-path", str(store), "--out", str(out), "--template", "{question} {response}\\n{category}"]
    assert export(capsys, *args)[0] == 0
    manifest = manifest_of(out)
    assert manifest["template"] == "{question} {response}\n{category}"
    assert manifest["fields"] == {name: list(keys) for name, keys in DEFAULT_FIELDS.items() if name != "thought"}
    assert [row["text"] for row in rows_of(out).values()] == ["Q? A.", "R? B."]
    assert "1 rows have a `censored` value that is not true/false; left empty" in logged(caplog)
    assert "column 'category' is empty (map it with --field category=KEY)" in logged(caplog)
    assert "column 'subject' is empty" in logged(caplog) and "'thought'" not in logged(caplog)


def test_a_numeric_metadata_value_is_its_text_and_a_bracketed_number_an_embedding() -> None:
    """docs/export.md: "a metadata value of numbers is text like any other"
    A finite float is written as Python writes it; NaN, infinity and booleans are no text (the row lacks that
    value). Brackets on both ends make a single number an embedding; on one end only, it is text."""
    from launcher.prompt_rows import _text, is_number_list  # pyright: ignore[reportPrivateUsage]

    assert [_text(v) for v in (3.5, 0.0, 7, " 1.25 ")] == ["3.5", "0.0", "7", "1.25"]
    assert [_text(v) for v in (float("nan"), float("inf"), True, None, "  ")] == [None] * 5
    assert [is_number_list(t) for t in ("[5]", "(5)", "5", "(5", "5]", "[1, 2X]")] == [
        True, True, False, False, False, False,
    ]  # fmt: skip


def test_a_template_refusal_lists_every_field_it_may_use() -> None:
    """docs/export.md: "`--template '{question}\\n\\n{response}'` sets it, from `{question}`, `{response}`,"
    An unknown field names the fields there are, each in braces; a template with none says why it is refused."""
    from launcher.errors import LauncherError
    from launcher.prompt_rows import TEMPLATE_FIELDS, check_template

    with pytest.raises(LauncherError) as unknown:
        check_template("{question} {answer}")
    assert str(unknown.value) == "--template: unknown field(s) answer; a template may use " + ", ".join(
        "{" + f + "}" for f in TEMPLATE_FIELDS
    )
    with pytest.raises(LauncherError) as none:
        check_template("always the same")
    assert str(none.value) == "--template has no {field}: every row would get the same text"
