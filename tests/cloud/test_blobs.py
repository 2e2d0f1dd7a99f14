"""The content-addressed blob store: names, atomic durable writes, verified reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cipherloop.cloud.blobs import BlobCorrupted, BlobStore


def test_put_names_blob_by_sha256_and_reads_it_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"abc")
    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert store.read(digest) == b"abc"
    assert store.path(digest) == tmp_path / digest[:2] / digest


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert store.put(b"same") == store.put(b"same")
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_put_fsyncs_file_and_directory_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = BlobStore(tmp_path)
    store.put(b"durable")
    assert len(synced) >= 2  # the file, then its directory (and the root for a new fan-out)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_failed_write_leaves_nothing_under_a_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put(b"lost")
    assert not store.exists(hashlib.sha256(b"lost").hexdigest())
    assert list((tmp_path / "tmp").iterdir()) == []


def test_read_refuses_a_corrupted_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"original")
    store.path(digest).write_bytes(b"tampered")
    with pytest.raises(BlobCorrupted):
        store.read(digest)


def test_read_of_missing_blob_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BlobStore(tmp_path).read("0" * 64)


@pytest.mark.parametrize("name", ["../etc/passwd", "A" * 64, "0" * 63, ""])
def test_path_refuses_anything_but_a_sha256_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(name)


def test_sweep_removes_only_old_temp_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    old, fresh = tmp_path / "tmp" / "put-old", tmp_path / "tmp" / "put-fresh"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (0, 0))
    assert store.sweep_tmp(older_than_s=60) == 1
    assert not old.exists() and fresh.exists()
