"""Export the prompt collection from ChromaDB to the HF dataset that a training job reads as its ``prompts`` channel.

    python launcher/export_prompts.py --chroma-host chroma.example.org --chroma-port 443 --chroma-ssl
    python launcher/export_prompts.py --chroma-path ~/chroma-store --out data/prompts
    python launcher/export_prompts.py --chroma-path ~/chroma-store --s3-uri s3://bucket/prompts/v1

A server token comes only from the environment (CHROMADB_TOKEN). A local store is read from a temporary copy and
never changed. --out receives the ``save_to_disk`` dataset, manifest.json and categories.png, all at once: a failed
export leaves the previous one as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from container_src.records import replace_dir
from launcher.chroma_source import Source, get_collection, open_client, read_records
from launcher.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK, LauncherError
from launcher.prompt_rows import (
    DUPLICATE,
    NO_QUESTION,
    NO_RESPONSE,
    FieldMapping,
    available_keys,
    build_rows,
    category_counts,
    check_keys,
    check_template,
    fingerprint,
    parse_field_overrides,
)
from launcher.upload import MANIFEST, check_remote, split_prefix, upload_export

logger = logging.getLogger("export_prompts")

TOOL_VERSION = "export_prompts 1.0"
DEFAULT_COLLECTION = "mapping_censorship_questions"
DEFAULT_OUT = Path("data/prompts")
CATEGORIES_PNG = "categories.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="export_prompts.py",
        description="Export a ChromaDB prompt collection to an HF dataset (save_to_disk) for the prompts channel.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--chroma-path", type=Path, help="a local Chroma store (read from a temporary copy)")
    src.add_argument("--chroma-host", help="a Chroma server; the token comes from $CHROMADB_TOKEN")
    p.add_argument("--chroma-port", type=int, help="server port (default 8000, or 443 with --chroma-ssl)")
    p.add_argument("--chroma-ssl", action="store_true", help="talk HTTPS to the server")
    p.add_argument("--collection", default=DEFAULT_COLLECTION, help=f"default {DEFAULT_COLLECTION}")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="read column NAME from metadata key KEY ('document' is the row's document); repeatable",
    )
    p.add_argument(
        "--template",
        help="text of each row, e.g. '{question}\\n\\n{response}'; default: question, blank line, response",
    )
    p.add_argument(
        "--with-thought",
        action="store_true",
        help="add the thought column, and the thought to the default text (implied by --field thought=KEY)",
    )
    p.add_argument("--keep-duplicates", action="store_true", help="keep rows whose question an earlier row already has")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"export folder (default {DEFAULT_OUT})")
    p.add_argument("--s3-uri", help="also upload the export under this s3:// prefix")
    p.add_argument("--force", action="store_true", help="with --s3-uri: replace an export with another fingerprint")
    p.add_argument("--page-size", type=int, default=1000, help="rows per request (default 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.chroma_path is not None and (args.chroma_port is not None or args.chroma_ssl):
        p.error("--chroma-port and --chroma-ssl go with --chroma-host, not --chroma-path")
    return args


def _source(args: argparse.Namespace) -> Source:
    if args.chroma_path is not None:
        return Source(path=args.chroma_path)
    port = args.chroma_port if args.chroma_port is not None else 443 if args.chroma_ssl else 8000
    return Source(host=args.chroma_host, port=port, ssl=args.chroma_ssl)


def _check_out(out: Path, source: Source) -> None:
    """Refuse an --out that is not ours to replace: a folder that holds something other than an earlier export,
    or a place inside the store being read."""
    if source.path is not None and out.resolve().is_relative_to(source.path.resolve()):
        raise LauncherError(f"--out {out} is inside the store {source.path}, which must stay unchanged")
    if out.exists() and not out.is_dir():
        raise LauncherError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise LauncherError(
            f"--out {out} holds files but no {MANIFEST}, so it is not an earlier export; choose another"
        )


def _recover(out: Path) -> None:
    """Tidy after an export that was killed mid-way: drop its temporary folder, and put back a previous export that
    `replace_dir` moved aside (as ``.NAME.old``) but had not yet replaced."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    aside = out.with_name(f".{out.name}.old")
    if aside.exists() and not out.exists():
        logger.warning("restoring the previous export from %s (an earlier export was interrupted)", aside)
        aside.rename(out)
    shutil.rmtree(aside, ignore_errors=True)


def _features(columns: Sequence[str]) -> Any:
    from datasets import Features, Value

    return Features({c: Value("bool" if c == "censored" else "string") for c in columns})


def plot_categories(categories: dict[str, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(categories)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.35 * len(names)), dpi=100)
    bars = ax.barh(names, [categories[n] for n in names])
    ax.bar_label(bars, padding=2)
    ax.set_xlabel("prompts")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_export(out: Path, rows: list[dict[str, Any]], columns: Sequence[str], manifest: dict[str, Any]) -> None:
    """Dataset, manifest and PNG into a temporary sibling folder, then swapped in for ``out``."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        dataset = Dataset.from_dict({c: [row[c] for row in rows] for c in columns}, features=_features(columns))
        dataset.save_to_disk(str(tmp))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        plot_categories(manifest["categories"], tmp / CATEGORIES_PNG, f"{manifest['collection']}: {len(rows)} prompts")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def summary(manifest: dict[str, Any], out: Path) -> str:
    counts = manifest["counts"]
    table = [
        ("rows read", counts["read"]),
        ("exported", counts["exported"]),
        ("skipped", sum(counts["skipped"].values())),
        *((f"  {reason}", n) for reason, n in counts["skipped"].items()),
        ("categories", ""),
        *((f"  {name}", n) for name, n in manifest["categories"].items()),
    ]
    width = max(len(label) for label, _ in table) + 2
    lines = [f"{label:<{width}}{n:>8}" for label, n in table]
    lines += [f"{'fingerprint':<{width}}{manifest['fingerprint']}", f"{'written to':<{width}}{out}"]
    return "\n".join(lines) + "\n"


def export(args: argparse.Namespace) -> dict[str, Any]:
    """The whole export; returns the manifest. Every check that needs no data runs before the source is opened."""
    source = _source(args)
    source.check()
    fields, overridden = parse_field_overrides(args.field)
    template = check_template(args.template) if args.template is not None else None
    # Mapping the thought is asking for it: the column (and the thought in the default text) comes with it.
    with_thought = args.with_thought or "thought" in overridden
    if with_thought and not args.with_thought:
        logger.info("--field thought=%s: exporting the thought column, as with --with-thought", fields["thought"][0])
    mapping = FieldMapping(fields, overridden, template, with_thought, args.keep_duplicates)
    if args.page_size < 1:
        raise LauncherError(f"--page-size {args.page_size}: must be at least 1")
    if args.s3_uri:
        split_prefix(args.s3_uri)
    if args.out.is_symlink():  # the export replaces a folder by renaming: through a link, replace where it points
        args.out = args.out.resolve()
    _recover(args.out)
    _check_out(args.out, source)

    where = source.describe()
    with open_client(source) as client:
        collection = get_collection(client, args.collection, where)
        records = read_records(collection, where, args.page_size, progress=not args.no_progress)
    for warning in check_keys(mapping, available_keys(records)):
        logger.warning(warning)
    built = build_rows(records, mapping)
    skipped = {reason: built.skipped[reason] for reason in (NO_QUESTION, NO_RESPONSE, DUPLICATE)} | dict(built.skipped)
    if not built.rows:
        raise LauncherError(
            f"all {len(records)} rows were skipped ({skipped}); nothing to export. Check the --field mapping."
        )
    if built.unreadable_censored:
        logger.warning("%d rows have a `censored` value that is not true/false; left empty", built.unreadable_censored)
    columns = mapping.columns
    manifest = {
        "source": where,
        "collection": args.collection,
        "counts": {"read": len(records), "exported": len(built.rows), "skipped": skipped},
        "categories": category_counts(built.rows),
        "fingerprint": fingerprint(built.rows, columns),
        "tool_version": TOOL_VERSION,
        "columns": list(columns),
        "fields": {name: list(keys) for name, keys in fields.items() if name in columns},
        "template": template,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if args.s3_uri:  # refuse a conflicting upload before anything is written
        check_remote(args.s3_uri, manifest["fingerprint"], force=args.force)
    write_export(args.out, built.rows, columns, manifest)
    if args.s3_uri:
        manifest["s3_uri"] = upload_export(args.out, args.s3_uri, force=args.force)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("datasets").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        manifest = export(args)
    except LauncherError as exc:  # every refusal of the export is status 2, S3's too
        logger.error("%s", exc)
        return EXIT_INPUT
    except Exception:
        logger.exception("export failed")
        return EXIT_FAILED
    sys.stdout.write(summary(manifest, args.out))
    if manifest.get("s3_uri"):
        sys.stdout.write(f"uploaded to    {manifest['s3_uri']}\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
