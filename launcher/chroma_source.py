"""Reading a Chroma collection, page by page, from a server or from a local store.

A local store is always read from a temporary copy: chromadb 1.x migrates an older store's files in place when it
opens them, after which the user's own tools, pinned to an older chromadb, may no longer read it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from launcher.errors import LauncherError
from launcher.prompt_rows import Record

if TYPE_CHECKING:
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger(__name__)

TOKEN_ENV = "CHROMADB_TOKEN"
STORE_FILE = "chroma.sqlite3"


@dataclass(frozen=True)
class Source:
    """Where the collection lives: ``path`` (a local store) or ``host``/``port``/``ssl`` (a Chroma server)."""

    path: Path | None = None
    host: str | None = None
    port: int = 8000
    ssl: bool = False

    def describe(self) -> str:
        """For messages and the manifest; never holds the token."""
        if self.path is not None:
            return str(self.path)
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    def check(self) -> None:
        """Cheap checks before anything is opened."""
        if self.path is not None:
            if not self.path.is_dir():
                raise LauncherError(f"--chroma-path {self.path}: no such directory")
            if not (self.path / STORE_FILE).is_file():
                raise LauncherError(f"--chroma-path {self.path}: not a Chroma store (no {STORE_FILE} in it)")
        elif "://" in (self.host or "") or "/" in (self.host or ""):
            raise LauncherError(f"--chroma-host {self.host}: give a host name, not a URL (--chroma-ssl for https)")
        elif not 0 < self.port < 65536:
            raise LauncherError(f"--chroma-port {self.port}: not a TCP port (1-65535)")


def _writable_copy(src: Path, dst: Path) -> None:
    # Plain file copies, then owner-writable folders: a read-only source (a CI mount) must still give a copy
    # that chromadb can migrate and lock.
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(dst):
        Path(folder).chmod(0o755)


def persistent_client(path: Path) -> Client:
    """An embedded client on ``path``, telemetry off. (chromadb types its factories as ClientAPI, which lacks the
    close() that every concrete client has.)"""
    import chromadb
    from chromadb.config import Settings

    return cast("Client", chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False)))


def http_client(host: str, port: int, ssl: bool = False, headers: dict[str, str] | None = None) -> Client:
    """A client of a Chroma server, telemetry off."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    return cast("Client", chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=headers, settings=settings))


@contextmanager
def open_client(source: Source) -> Iterator[Client]:
    with tempfile.TemporaryDirectory(prefix="chroma-export-") as tmp:
        try:
            if source.path is not None:
                copy = Path(tmp) / "store"
                _writable_copy(source.path, copy)
                client = persistent_client(copy)
            else:
                token = os.environ.get(TOKEN_ENV)
                headers = {"Authorization": f"Bearer {token}"} if token else None
                client = http_client(source.host or "", source.port, source.ssl, headers)
        except LauncherError:
            raise
        except Exception as exc:
            raise _open_error(source, exc) from None
        try:
            yield client
        finally:
            client.close()


def _open_error(source: Source, exc: Exception) -> LauncherError:
    if source.path is not None:
        return LauncherError(f"could not open the Chroma store {source.path}: {exc}")
    address = f"{source.host}:{source.port}"
    if "could not connect" in str(exc).lower():
        scheme = "https" if source.ssl else "http"
        return LauncherError(
            f"cannot reach a Chroma server at {address} ({scheme}): is it running, and are --chroma-host, "
            "--chroma-port and --chroma-ssl right?"
        )
    hint = f"check {TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else f"set {TOKEN_ENV} if the server needs a token"
    return LauncherError(f"the Chroma server at {address} refused the client: {exc} ({hint})")


def get_collection(client: Client, name: str, where: str) -> Collection:
    """The named collection; a missing one is an error that lists those that exist (nothing is ever created)."""
    names = sorted(collection.name for collection in client.list_collections())
    if name not in names:
        have = f"Collections there: {', '.join(names)}" if names else "It has no collections"
        raise LauncherError(f"collection {name!r} does not exist in {where}. {have}. Choose one with --collection.")
    return client.get_collection(name)


def read_records(collection: Collection, where: str, page_size: int, progress: bool = True) -> list[Record]:
    """Every record (id, document, metadata), ``page_size`` at a time, with a progress bar."""
    from tqdm import tqdm

    total = collection.count()
    if total == 0:
        raise LauncherError(f"collection {collection.name!r} in {where} is empty: there is nothing to export")
    records: dict[str, Record] = {}
    offset = 0
    with tqdm(total=total, unit="rows", desc=f"reading {collection.name}", disable=not progress or None) as bar:
        while offset < total:
            try:
                page = collection.get(limit=page_size, offset=offset, include=["documents", "metadatas"])
            except Exception as exc:
                raise LauncherError(
                    f"reading {collection.name!r} from {where} failed after {offset} rows: {exc}"
                ) from None
            ids = page["ids"]
            if not ids:
                break
            documents = page["documents"] or [None] * len(ids)
            metadatas = page["metadatas"] or [None] * len(ids)
            for rid, document, metadata in zip(ids, documents, metadatas, strict=True):
                records[rid] = Record(rid, document, dict(metadata or {}))
            offset += len(ids)
            bar.update(len(ids))
    now = collection.count()
    if now != total or len(records) != total:
        raise LauncherError(
            f"collection {collection.name!r} changed while it was read ({total} rows at the start, {now} at the end, "
            f"{len(records)} distinct ids read); run the export again when it is quiet"
        )
    logger.info("read %d rows from %s / %s", total, where, collection.name)
    return list(records.values())
