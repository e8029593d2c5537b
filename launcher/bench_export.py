"""Benchmark the prompt export: build an embedded Chroma store of generated rows, export it, print rows/s.

    python launcher/bench_export.py --rows 100000

One row in ten has the collection's older shape, so both paths of the mapping are timed; the timed part is the
whole export as a user runs it (copying the store, reading it page by page, mapping, writing the dataset).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.chroma_source import persistent_client
from launcher.export_prompts import DEFAULT_COLLECTION, export, parse_args

CATEGORIES = ("official narrative", "refusal", "deflection", "partial answer")


def generated_row(i: int, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """(id, document, metadata) of row ``i``; every tenth in the older shape."""
    question = f"Question {i}: what happened at place {rng.randrange(10**6)} in year {1900 + i % 120}?"
    words = ("the", "official", "record", "states", "that")
    response = f"Response {i}: " + " ".join(rng.choice(words) for _ in range(30))
    stamp = f"2025-07-{1 + i % 28:02d}T12:00:{i % 60:02d}"
    if i % 10 == 9:
        embedding = ", ".join(f"{rng.uniform(-1, 1):.4f}" for _ in range(8))
        meta = {"question": question, "response_text": response, "kind_of_censorship": CATEGORIES[i % 4]}
        return f"row-{i:07d}", f"[{embedding}]", {**meta, "model": "older-model", "timestamp": stamp}
    meta = {"question": question, "response": response, "censorship_category": CATEGORIES[i % 4], "censored": i % 3 > 0}
    return f"row-{i:07d}", question, {**meta, "subject": "a-model", "thought": f"thinking of {i}", "timestamp": stamp}


def build_store(path: Path, rows: int, collection: str = DEFAULT_COLLECTION, seed: int = 0) -> None:
    """A persistent Chroma store at ``path`` holding ``rows`` generated rows, added in the largest batches allowed,
    with tiny explicit embeddings (no embedding model is loaded)."""
    rng = random.Random(seed)
    client = persistent_client(path)
    try:
        target = client.create_collection(collection)
        batch = client.get_max_batch_size()
        for start in range(0, rows, batch):
            chunk = [generated_row(i, rng) for i in range(start, min(rows, start + batch))]
            ids, documents, metadatas = zip(*chunk, strict=True)
            target.add(
                ids=list(ids),
                documents=list(documents),
                metadatas=list(metadatas),
                embeddings=[[rng.random(), rng.random()] for _ in ids],
            )
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--page-size", type=int, default=1000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        store = Path(tmp) / "store"
        start = time.perf_counter()
        build_store(store, args.rows)
        built = time.perf_counter() - start
        export_args = ["--chroma-path", str(store), "--out", str(Path(tmp) / "out")]
        export_args += ["--page-size", str(args.page_size), "--no-progress"]
        start = time.perf_counter()
        manifest = export(parse_args(export_args))
        took = time.perf_counter() - start
    exported = manifest["counts"]["exported"]
    sys.stdout.write(
        f"store of {args.rows} rows built in {built:.1f} s\n"
        f"exported {exported} of {manifest['counts']['read']} rows in {took:.1f} s: {args.rows / took:,.0f} rows/s\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
