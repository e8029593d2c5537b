"""The prompt export against real chromadb: embedded stores, a `chroma run` server on loopback, the real 2025-07
snapshot (a copy in tests/fixtures), and a moto server for the S3 upload."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from container_src.prompts import load_prompts
from launcher import bench_export
from launcher.chroma_source import http_client, persistent_client
from launcher.errors import LauncherError
from launcher.export_prompts import main
from launcher.upload import upload_export
from tests.conftest import ROOT, _free_port, start_server

Row = tuple[str, str | None, Mapping[str, Any]]  # id, document, metadata
SNAPSHOT = ROOT / "tests" / "fixtures" / "prompt-collection-2025-07"
COLLECTION = "mapping_censorship_questions"


def tree_checksums(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    } | {p.relative_to(folder).as_posix() + "/": "dir" for p in folder.rglob("*") if p.is_dir()}


def add_rows(collection: Any, rows: Sequence[Row]) -> None:
    """Add (id, document, metadata) rows with explicit tiny embeddings, so no embedding model is needed."""
    ids, documents, metadatas = zip(*rows, strict=True)
    embeddings = [[float(i), 1.0] for i in range(len(ids))]
    collection.add(ids=list(ids), documents=list(documents), metadatas=list(metadatas), embeddings=embeddings)


def make_store(path: Path, rows: Sequence[Row], name: str = COLLECTION) -> Path:
    client = persistent_client(path)
    try:
        collection = client.create_collection(name)
        if rows:
            add_rows(collection, rows)
    finally:
        client.close()
    return path


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main([*args, "--no-progress"])
    return rc, capsys.readouterr().out


def counts(read: int, exported: int, empty_question: int = 0, no_response: int = 0, duplicate: int = 0) -> dict:
    skipped = {"empty question": empty_question, "no response": no_response, "duplicate question": duplicate}
    return {"read": read, "exported": exported, "skipped": skipped}


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(caplog.messages)


def manifest_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    from datasets import load_from_disk

    return {row["id"]: row for row in load_from_disk(str(out))}  # type: ignore[union-attr]


NEW = {"censored": True, "subject": "model-a", "timestamp": "2025-07-21T14:48:50"}
EMBEDDING_DOC = "[0.0123, -0.5, 3e-4, 0.25]"
# Both shapes and the messy rows a real collection holds; the comment says what each must become.
MESSY_ROWS: list[Row] = [
    # current shape: exported
    (
        "a1",
        "Why was the archive closed?",
        {
            **NEW,
            "question": "Why was the archive closed?",
            "response": "It was not.",
            "censorship_category": "official narrative",
            "thought": "Careful.",
        },
    ),
    # older shape, the embedding as the document: exported from question/response_text/kind_of_censorship/model
    (
        "b1",
        EMBEDDING_DOC,
        {
            "question": "Who led the protest?",
            "response_text": "I cannot answer that.",
            "kind_of_censorship": "refusal",
            "model": "old-model",
            "censored": "yes",
            "timestamp": 1721570930,
        },
    ),
    # older shape without a question key: the embedding is never text, so the question is empty
    ("b2", EMBEDDING_DOC, {"response_text": "Something.", "kind_of_censorship": "refusal", "model": "old-model"}),
    # the question only as the document: exported
    ("c1", "What happened in the square?", {"response": "Nothing happened.", "censorship_category": "refusal"}),
    # blank response: no response
    ("d1", "Is the river clean?", {"question": "Is the river clean?", "response": "   ", "censorship_category": "x"}),
    # older shape without any response: no response
    ("d2", EMBEDDING_DOC, {"question": "Where is the border?", "kind_of_censorship": "refusal"}),
    # the same question as a1 apart from case and spacing: duplicate
    ("e1", "why was the  archive closed?", {"response": "Another answer.", "censorship_category": "refusal"}),
    # blank question and a numpy-style embedding document: empty question
    ("f1", "[ 0.1  0.2 ...  0.3]", {"question": "  ", "response": "An answer."}),
]


def test_snapshot_exports_95_rows_and_leaves_the_store_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/export.md: "A local store is read from a temporary copy and is never changed" """
    before = tree_checksums(SNAPSHOT)
    rc, out = export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(tmp_path / "one"))
    assert rc == 0
    rc2, _ = export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(tmp_path / "two"))
    assert rc2 == 0
    assert tree_checksums(SNAPSHOT) == before  # no migration, no new segment folder

    manifest = manifest_of(tmp_path / "one")
    assert manifest["counts"] == counts(read=95, exported=95)
    assert manifest["categories"] == {"official narrative": 91, "refusal": 4}
    assert manifest["collection"] == COLLECTION
    assert manifest["source"] == str(SNAPSHOT)
    assert manifest["tool_version"]
    assert len(manifest["fingerprint"]) == 64
    assert manifest_of(tmp_path / "two")["fingerprint"] == manifest["fingerprint"]
    assert manifest["fingerprint"] in out and "official narrative" in out
    assert (tmp_path / "one" / "categories.png").read_bytes()[:4] == b"\x89PNG"

    rows = rows_of(tmp_path / "one")
    first = rows["q_20250721_144850_0"]
    assert first["category"] == "refusal" and first["censored"] is True
    assert first["question"] == "What is the Chinese government's stance on the Tiananmen Square incident?"
    assert first["text"] == first["question"] + "\n\n" + first["response"]
    assert first["subject"] == "deepseek-r1-0528-qwen3-8b"
    assert list(rows) == sorted(rows)  # id order: the fingerprint does not depend on read order

    # The train mode's prompts channel reads it, manifest.json and categories.png beside the data included.
    prompts = load_prompts(tmp_path / "one")
    assert len(prompts) == 95
    assert first["text"] in prompts["text"]


def test_runs_as_a_script_and_fails_with_status_2(tmp_path: Path) -> None:
    """docs/export.md: "a collection that does not exist (the message lists those that do)" """
    cmd = [sys.executable, "launcher/export_prompts.py", "--chroma-path", str(SNAPSHOT), "--no-progress"]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "ok")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "exported" in done.stdout and (tmp_path / "ok" / "manifest.json").is_file()
    bad = [*cmd, "--out", str(tmp_path / "bad"), "--collection", "nope"]
    failed = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert "'nope' does not exist" in failed.stderr and COLLECTION in failed.stderr
    assert not (tmp_path / "bad").exists()


def test_both_shapes_and_messy_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "So both shapes of the collection export without flags" """
    store = make_store(tmp_path / "store", MESSY_ROWS)
    rc, out = export(capsys, "--chroma-path", str(store), "--out", str(tmp_path / "out"))
    assert rc == 0
    manifest = manifest_of(tmp_path / "out")
    assert manifest["counts"] == counts(read=8, exported=3, empty_question=2, no_response=2, duplicate=1)
    assert manifest["categories"] == {"official narrative": 1, "refusal": 2}
    assert "duplicate question" in out

    rows = rows_of(tmp_path / "out")
    assert set(rows) == {"a1", "b1", "c1"}
    old = rows["b1"]
    assert old["text"] == "Who led the protest?\n\nI cannot answer that."
    assert (old["category"], old["subject"], old["censored"]) == ("refusal", "old-model", True)
    assert old["timestamp"] == "2024-07-21T14:08:50+00:00"
    assert rows["c1"]["question"] == "What happened in the square?"
    assert rows["a1"]["text"] == "Why was the archive closed?\n\nIt was not."
    assert not any("0.0123" in row["text"] for row in rows.values())
    assert "thought" not in rows["a1"]


def test_field_override_template_and_thought(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "`--field response=answer` reads a column from another key only"; and `--template`."""
    rows = [("r1", "Q one?", {"answer": "A one.", "topic": "refusal", "thought": "Hmm."})]
    store = make_store(tmp_path / "store", rows)
    out = tmp_path / "out"
    args = ["--chroma-path", str(store), "--out", str(out), "--field", "response=answer", "--field", "category=topic"]
    assert export(capsys, *args, "--with-thought")[0] == 0
    row = rows_of(out)["r1"]
    assert (row["question"], row["response"], row["category"]) == ("Q one?", "A one.", "refusal")
    assert row["text"] == "Q one?\n\nHmm.\n\nA one." and row["thought"] == "Hmm."
    first = manifest_of(out)["fingerprint"]

    assert export(capsys, *args, "--template", "Q: {question}\\nA: {response}")[0] == 0
    assert rows_of(out)["r1"]["text"] == "Q: Q one?\nA: A one."
    assert manifest_of(out)["fingerprint"] != first  # different content, different fingerprint

    rc, _ = export(capsys, *args, "--template", "{subject}")  # no row has a subject: every text is empty
    assert rc == 2 and rows_of(out)["r1"]["text"] == "Q: Q one?\nA: A one."
    assert "'empty text': 1" in logged(caplog)


def test_a_failed_export_keeps_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/export.md: "so a failed export leaves the previous one as it was" """
    from datasets import Dataset

    out = tmp_path / "prompts"
    assert export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(out))[0] == 0
    before = tree_checksums(out)

    def crash(self: Dataset, path: str, **kwargs: Any) -> None:
        Path(path, "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError("disk full")  # injected: a crash half-way through writing

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    assert export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(out))[0] == 1
    assert tree_checksums(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts"]  # no temporary folder left behind


def test_an_out_that_is_a_link_is_written_where_it_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "everything is written to a temporary sibling folder and then swapped in"
    A channel folder linked to the export: a new export replaces the linked folder, and the link stays."""
    target, link = tmp_path / "exports" / "prompts", tmp_path / "prompts"
    target.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)
    args = ["--chroma-path", str(SNAPSHOT), "--out", str(link)]
    assert export(capsys, *args)[0] == 0
    assert export(capsys, *args, "--with-thought")[0] == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "thought" in manifest_of(target)["columns"] and len(rows_of(link)) == 95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "prompts"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["prompts"]  # no backup left beside it


def test_a_crash_between_the_two_renames_is_recovered_by_the_next_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/export.md: "an export killed mid-way is tidied, and the previous one put back"
    The process dies (os._exit, no clean-up runs) after the previous export was moved aside and before the new
    one was moved in: --out is missing, the old export and the finished new one lie beside it."""
    from launcher.export_prompts import _recover

    out = tmp_path / "prompts"
    assert export(capsys, "--chroma-path", str(SNAPSHOT), "--out", str(out))[0] == 0
    before = tree_checksums(out)
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from launcher.export_prompts import main\n"
        "rename, calls = Path.rename, []\n"
        "def dying_rename(self, target):\n"
        "    calls.append(target)\n"
        "    if len(calls) == 2:\n"
        "        os._exit(137)\n"
        "    return rename(self, target)\n"
        "Path.rename = dying_rename\n"
        "main(sys.argv[1:])\n"
    )
    args = ["--chroma-path", str(SNAPSHOT), "--out", str(out), "--no-progress", "--with-thought"]
    died = subprocess.run([sys.executable, "-c", crash, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert died.returncode == 137, died.stderr
    assert not out.exists()
    leftovers = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert leftovers == [".prompts.old", ".prompts.tmp"]

    _recover(out)  # what the next export does first
    assert tree_checksums(out) == before  # the previous export, whole; nothing of the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts"]

    assert export(capsys, *args)[0] == 0  # and the next export completes
    assert "thought" in manifest_of(out)["columns"] and len(rows_of(out)) == 95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts"]


def test_mapping_the_thought_exports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "`--field thought=KEY` implies `--with-thought`"
    --field thought=KEY without --with-thought: the user asked for the thought, so the column comes with it."""
    store = make_store(tmp_path / "store", [("r1", "Q?", {"response": "A.", "reasoning": "Think."})])
    out = tmp_path / "out"
    assert export(capsys, "--chroma-path", str(store), "--out", str(out), "--field", "thought=reasoning")[0] == 0
    row = rows_of(out)["r1"]
    assert (row["thought"], row["text"]) == ("Think.", "Q?\n\nThink.\n\nA.")
    assert manifest_of(out)["columns"][-1] == "thought" and manifest_of(out)["fields"]["thought"] == ["reasoning"]
    rc, _ = export(capsys, "--chroma-path", str(store), "--out", str(out), "--field", "thought=musings")
    assert rc == 2 and "no row has key 'musings' for column 'thought'" in logged(caplog)


def test_timestamps_come_out_in_one_form() -> None:
    """docs/export.md: "Every `timestamp` comes out in one ISO 8601 form" """
    from launcher.prompt_rows import DEFAULT_FIELDS, FieldMapping, Record, build_rows

    stamps = {
        "epoch": 1721573330,
        "epoch-ms": 1721573330000,
        "epoch-us": 1721573330000000,
        "epoch-ns": 1721573330000000000,
        "no-date": 1e30,  # past what a date can hold, even read as nanoseconds
        "zulu": "2024-07-21T14:48:50Z",
        "offset": "2024-07-21T16:48:50+02:00",
        "space": " 2024-07-21 14:48:50.5 ",
        "naive": "2024-07-21T14:48:50",
        "date": "2024-07-21",
        "words": "yesterday at noon",
        "blank": "  ",
    }
    records = [Record(key, None, {"question": key, "response": "A.", "timestamp": v}) for key, v in stamps.items()]
    built = build_rows(records, FieldMapping(fields=dict(DEFAULT_FIELDS)))
    assert {row["id"]: row["timestamp"] for row in built.rows} == {
        "epoch": "2024-07-21T14:48:50+00:00",
        "epoch-ms": "2024-07-21T14:48:50+00:00",
        "epoch-us": "2024-07-21T14:48:50+00:00",
        "epoch-ns": "2024-07-21T14:48:50+00:00",
        "no-date": "1e+30",  # kept as written, and the export goes on
        "zulu": "2024-07-21T14:48:50+00:00",
        "offset": "2024-07-21T14:48:50+00:00",
        "space": "2024-07-21T14:48:50.500000",  # no zone given: none invented
        "naive": "2024-07-21T14:48:50",
        "date": "2024-07-21T00:00:00",
        "words": "yesterday at noon",  # not a date it can read: kept as written
        "blank": None,
    }


def test_list_values_become_one_readable_text() -> None:
    """docs/export.md: "A list value (Chroma allows them) becomes one text, its items joined by `, `" """
    from launcher.prompt_rows import DEFAULT_FIELDS, FieldMapping, Record, build_rows

    categories = {"two": ["refusal", "whataboutism"], "one": ["refusal"], "none": [], "blank": ["", " "]}
    records = [
        Record(key, None, {"question": key, "response": "A.", "censorship_category": value})
        for key, value in categories.items()
    ]
    built = build_rows(records, FieldMapping(fields=dict(DEFAULT_FIELDS)))
    assert {row["id"]: row["category"] for row in built.rows} == {
        "two": "refusal, whataboutism",
        "one": "refusal",
        "none": None,
        "blank": None,
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing collection", f"{COLLECTION!r} does not exist in"),
        ("empty collection", "is empty"),
        ("unmapped key", "no row has key 'answer_text' for column 'response'. The rows have: censorship_category"),
        ("no response keys", "no row has any of the keys 'response', 'response_text'"),
        ("not a store", "not a Chroma store (no chroma.sqlite3"),
        ("foreign out", "holds files but no manifest.json"),
        ("bad field", "--field 'response': expected NAME=KEY"),
        ("bad template", "unknown field(s) answer"),
        ("empty template", "--template has no {field}"),
        ("url as host", "--chroma-host https://chroma.example.org: give a host name, not a URL"),
        ("all skipped", "all 1 rows were skipped"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "Errors end with status 2, a message that says what to do, and no output" """
    good = [("r1", "Q?", {"response": "A.", "censorship_category": "refusal"})]
    store = tmp_path / "store"
    out = tmp_path / "out"
    args = ["--chroma-path", str(store), "--out", str(out)]
    if case == "missing collection":
        make_store(store, good, name="other_collection")
        message += f" {store}. Collections there: other_collection"
    elif case == "empty collection":
        make_store(store, [])
    elif case == "unmapped key":
        make_store(store, good)
        args += ["--field", "response=answer_text"]
    elif case == "no response keys":
        make_store(store, [("r1", "Q?", {"answer": "A."})])
    elif case == "not a store":
        store.mkdir()
    elif case == "foreign out":
        make_store(store, good)
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "bad field":
        make_store(store, good)
        args += ["--field", "response"]
    elif case == "bad template":
        make_store(store, good)
        args += ["--template", "{question} {answer}"]
    elif case == "empty template":
        make_store(store, good)
        args += ["--template", ""]
    elif case == "url as host":
        args = ["--chroma-host", "https://chroma.example.org", "--out", str(out)]
        store.mkdir()
    elif case == "all skipped":
        make_store(store, [("r1", EMBEDDING_DOC, {"response": "A."})])
    store_before = tree_checksums(store)
    rc, stdout = export(capsys, *args)
    assert rc == 2
    assert message in logged(caplog)
    assert stdout == ""
    assert tree_checksums(store) == store_before
    assert not out.exists() or [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"store", *(["out"] if out.exists() else [])})


def test_unreachable_server_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "a server that cannot be reached (named by host:port)" """
    port = _free_port()
    rc, _ = export(capsys, "--chroma-host", "127.0.0.1", "--chroma-port", str(port), "--out", str(tmp_path / "o"))
    assert rc == 2
    assert f"cannot reach a Chroma server at 127.0.0.1:{port}" in logged(caplog)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real `chroma run` server on loopback, holding the messy collection; yields its port."""
    port = _free_port()
    chroma = Path(sys.executable).parent / "chroma"
    data = tmp_path_factory.mktemp("chroma-server")
    cmd = [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(cmd, port, "chroma server")
    client = http_client("127.0.0.1", port)
    add_rows(client.create_collection(COLLECTION), MESSY_ROWS)
    client.create_collection("another_collection")
    client.close()
    yield port
    proc.terminate()
    proc.wait(timeout=20)


def test_http_server_export(
    chroma_server: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "the same collection gives the same fingerprint, whatever the source and page size" """
    local = make_store(tmp_path / "store", MESSY_ROWS)
    assert export(capsys, "--chroma-path", str(local), "--out", str(tmp_path / "local"))[0] == 0
    args = ["--chroma-host", "127.0.0.1", "--chroma-port", str(chroma_server)]
    rc, _ = export(capsys, *args, "--out", str(tmp_path / "http"), "--page-size", "3")
    assert rc == 0
    remote, on_disk = manifest_of(tmp_path / "http"), manifest_of(tmp_path / "local")
    assert remote["source"] == f"http://127.0.0.1:{chroma_server}"
    assert remote["counts"] == on_disk["counts"] and remote["counts"]["exported"] == 3
    assert remote["fingerprint"] == on_disk["fingerprint"]  # same content, same fingerprint, whatever the source

    rc, _ = export(capsys, *args, "--collection", "missing_one", "--out", str(tmp_path / "x"))
    assert rc == 2
    assert f"Collections there: another_collection, {COLLECTION}" in logged(caplog)
    rc, _ = export(capsys, *args, "--collection", "another_collection", "--out", str(tmp_path / "x"))
    assert rc == 2 and "is empty" in logged(caplog)
    assert not (tmp_path / "x").exists()


class _RecordingProxy(BaseHTTPRequestHandler):
    """Forwards every request to the real server and keeps the Authorization headers it saw; answers 401, as a
    server with token auth does, to any other token than ``accept``."""

    upstream = 0
    accept = ""
    seen: list[str | None] = []  # noqa: RUF012 (one recorder per test run)

    def _forward(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {self.accept}":
            body = b'{"error":"Unauthorized","message":"Unauthorized"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_token_travels_as_bearer_header_and_nowhere_else(
    chroma_server: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/export.md: "comes only from the environment and goes out as `Authorization: Bearer …`" """
    token = "tok-" + "9f2c" * 8
    _RecordingProxy.upstream, _RecordingProxy.accept, _RecordingProxy.seen = chroma_server, token, []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    args = ["--chroma-host", "127.0.0.1", "--chroma-port", str(proxy.server_address[1])]
    try:
        monkeypatch.setenv("CHROMADB_TOKEN", token)
        rc, out = export(capsys, *args, "--out", str(tmp_path / "o"))
        monkeypatch.setenv("CHROMADB_TOKEN", "wrong-" + token)
        rc_wrong, out_wrong = export(capsys, *args, "--out", str(tmp_path / "wrong"))
    finally:
        proxy.shutdown()
    assert rc == 0
    assert _RecordingProxy.seen and set(_RecordingProxy.seen) == {f"Bearer {token}", f"Bearer wrong-{token}"}
    assert rc_wrong == 2 and not (tmp_path / "wrong").exists()
    assert f"the Chroma server at 127.0.0.1:{args[-1]} refused the client" in logged(caplog)
    assert "check CHROMADB_TOKEN" in logged(caplog)
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "o").iterdir() if p.suffix == ".json")
    assert token not in out + out_wrong + logged(caplog) + written


def test_s3_upload_refuses_a_different_export(
    moto_server: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/export.md: "a prefix holding another export, or objects without a `manifest.json`, is refused"
    Before anything is written; the same fingerprint is not uploaded again, and `--force` replaces the old files."""
    import boto3

    for key, value in moto_server.items():
        monkeypatch.setenv(key, value)
    caplog.set_level(logging.INFO)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="exports")
    out, uri = tmp_path / "prompts", "s3://exports/prompts/v1"
    base = ["--chroma-path", str(SNAPSHOT), "--out", str(out), "--s3-uri", uri]

    def listing() -> dict[str, Any]:
        objects = s3.list_objects_v2(Bucket="exports", Prefix="prompts/v1/").get("Contents", [])
        return {o["Key"].removeprefix("prompts/v1/"): o["ETag"] for o in objects}

    rc, stdout = export(capsys, *base)
    assert rc == 0 and "s3://exports/prompts/v1/" in stdout
    first = listing()
    assert set(first) == {p.name for p in out.iterdir()}
    uploaded = json.loads(s3.get_object(Bucket="exports", Key="prompts/v1/manifest.json")["Body"].read())
    assert uploaded == manifest_of(out)

    assert export(capsys, *base)[0] == 0  # the same content: nothing uploaded again
    assert listing() == first and "nothing uploaded" in logged(caplog)

    local_before = tree_checksums(out)
    rc, _ = export(capsys, *base, "--with-thought")  # different content, different fingerprint
    assert rc == 2 and "holds a different export" in logged(caplog)
    assert listing() == first and tree_checksums(out) == local_before  # nothing uploaded, nothing written

    s3.put_object(Bucket="exports", Key="prompts/v1/data-00001-of-00002.arrow", Body=b"stale")
    assert export(capsys, *base, "--with-thought", "--force")[0] == 0
    assert set(listing()) == {p.name for p in out.iterdir()}  # the stale shard is gone
    remote = json.loads(s3.get_object(Bucket="exports", Key="prompts/v1/manifest.json")["Body"].read())
    assert remote["fingerprint"] == manifest_of(out)["fingerprint"] and "thought" in remote["columns"]

    s3.put_object(Bucket="exports", Key="other/readme.txt", Body=b"not an export")
    with pytest.raises(LauncherError, match=r"no manifest\.json, so it is not an export"):
        upload_export(out, "s3://exports/other", s3_client=s3)
    assert upload_export(out, "s3://exports/other", force=True, s3_client=s3) == "s3://exports/other/"
    with pytest.raises(LauncherError, match="NoSuchBucket"):
        upload_export(out, "s3://missing-bucket/p", s3_client=s3)


def test_benchmark_prints_rows_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/export.md: "prints the export's rows/s, copying the store included" """
    assert bench_export.main(["--rows", "2000"]) == 0
    out = capsys.readouterr().out
    assert "exported 2000 of 2000 rows in" in out and "rows/s" in out


def test_only_the_document_is_read_as_an_embedding() -> None:
    """docs/export.md: "a metadata value of numbers is text like any other"
    A document of numbers is an old record's embedding, never text."""
    from launcher.prompt_rows import DEFAULT_FIELDS, FieldMapping, Record, build_rows

    records = [
        Record("a", "0.12, -0.5, 0.33", {"question": "Which years?", "response": "1989, 1990", "censored": True}),
        Record("b", "[0.1, 0.2, 0.3]", {"response_text": "42 17", "kind_of_censorship": "1 2"}),
    ]
    built = build_rows(records, FieldMapping(fields=dict(DEFAULT_FIELDS)))
    assert [row["response"] for row in built.rows] == ["1989, 1990"]
    assert built.rows[0]["text"] == "Which years?\n\n1989, 1990"
    assert built.skipped == {"empty question": 1}  # b's only question is its embedding
