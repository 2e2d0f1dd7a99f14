"""A content-addressed file store for ciphertext blobs.

Runs in: host (the service, its round worker and the engines' workers, which
read data blocks themselves), and owner (the estimator's scratch store). It
sits outside ``cloud`` so that :mod:`cipherloop.learn` can stream blocks from
it without importing the service. A blob is named by the SHA-256 of its bytes and written to a
temporary file, fsynced, atomically renamed into place and its directory
fsynced -- so a blob either exists whole under its name or not at all, and
a row that names it is only ever committed after it is durable. Writing the
same bytes twice is a no-op. Reads re-hash the bytes, so a corrupted file is
refused instead of handed on.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9-]{1,100}")


class BlobCorrupted(Exception):
    """A stored blob no longer matches its name (disk corruption or tampering)."""


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the name a blob is stored under."""
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobReader:
    """Sequential reads of one blob, hashed as they go (see :meth:`BlobStore.reader`)."""

    def __init__(self, f: BinaryIO, digest: str) -> None:
        self._f = f
        self._digest = digest
        self._hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the file)."""
        data = self._f.read(n)
        self._hash.update(data)
        return data

    def verify(self, *, at_end: bool = True) -> None:
        """Hash the rest and check the name; ``at_end`` also refuses bytes nobody read."""
        rest = self._f.read()
        self._hash.update(rest)
        if self._hash.hexdigest() != self._digest:
            raise BlobCorrupted(f"blob {self._digest[:12]}... does not match its name")
        if at_end and rest:
            raise BlobCorrupted(f"blob {self._digest[:12]}... is longer than its contents")


class BlobStore:
    """Blobs under ``root/ab/abcdef...``; temporary files under ``root/tmp``.

    Parameters
    ----------
    root : Path
        The store's directory; created if missing.

    Examples
    --------
    >>> import tempfile
    >>> store = BlobStore(Path(tempfile.mkdtemp()))
    >>> digest = store.put(b"ciphertext bytes")
    >>> store.read(digest)
    b'ciphertext bytes'
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists)."""
        if not _HEX64.fullmatch(digest):
            raise ValueError("a blob name is 64 lowercase hex digits")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its SHA-256 name. Idempotent.

        Parameters
        ----------
        data : bytes

        Returns
        -------
        str
            The blob's name, its hex SHA-256.
        """
        digest = sha256_hex(data)
        final = self.path(digest)
        if final.is_file():
            return digest
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fanout = final.parent
            created = not fanout.is_dir()
            fanout.mkdir(exist_ok=True)
            if created:
                _fsync_dir(self.root)
            os.replace(tmp, final)
            _fsync_dir(fanout)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def read(self, digest: str) -> bytes:
        """The blob's bytes, checked against its name.

        Raises
        ------
        FileNotFoundError
            No blob has this name.
        BlobCorrupted
            The file's bytes no longer hash to its name.
        """
        data = self.path(digest).read_bytes()
        if sha256_hex(data) != digest:
            raise BlobCorrupted(f"blob {digest[:12]}... does not match its name")
        return data

    @contextmanager
    def reader(self, digest: str) -> Iterator[BlobReader]:
        """Read a blob piece by piece, hashing as it goes; call ``verify()`` before trusting it.

        For blobs too large to hold twice (a block of ciphertexts): the caller
        keeps one piece at a time, and :meth:`BlobReader.verify` raises
        :class:`BlobCorrupted` unless the whole file hashes to its name.

        Raises
        ------
        FileNotFoundError
            No blob has this name.
        """
        with self.path(digest).open("rb") as f:
            yield BlobReader(f, digest)

    def link(self, name: str, digest: str) -> None:
        """Durably point ``name`` at the blob ``digest`` (a derived index, e.g. an upload's blocks).

        The link is written like a blob (temporary file, fsync, atomic rename),
        so it names a whole digest or nothing; it is an index only: losing it
        costs a recomputation, never data.
        """
        if not _NAME.fullmatch(name) or not _HEX64.fullmatch(digest):
            raise ValueError("a link name is 1-100 of [a-z0-9-]; a digest 64 lowercase hex digits")
        links = self.root / "links"
        created = not links.is_dir()
        links.mkdir(exist_ok=True)
        if created:
            _fsync_dir(self.root)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="link-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(digest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, links / name)
            _fsync_dir(links)
        finally:
            tmp.unlink(missing_ok=True)

    def resolve(self, name: str) -> str | None:
        """The digest ``name`` links to, if the link and its blob both exist."""
        if not _NAME.fullmatch(name):
            raise ValueError("a link name is 1-100 of [a-z0-9-]")
        try:
            digest = (self.root / "links" / name).read_text().strip()
        except FileNotFoundError:
            return None
        return digest if _HEX64.fullmatch(digest) and self.exists(digest) else None

    def sweep_tmp(self, *, older_than_s: float = 3600.0, now: float | None = None) -> int:
        """Remove temporary files a crash left behind; returns how many.

        Only files older than ``older_than_s`` go, so a writer in another
        process sharing the store keeps its file.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        n = 0
        for p in self._tmp.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n
