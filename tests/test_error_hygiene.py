"""Errors from ciphertext operations carry no key or ciphertext bytes.

The README promises that error messages never carry key or ciphertext
bytes. Each bad input here is built from real secret-key and ciphertext bytes
(truncated, spliced, or sent to the wrong key or parameters), and the error
it raises is searched for any 8-byte stretch of them -- raw, hex or base64 --
in its message, repr and args, and must not chain to a lower error that could.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from typing import Any

import cbor2
import numpy as np
import pytest

from cipherloop.ckks import CiphertextBatch, CkksParams, PublicContext, SecretContext
from cipherloop.errors import (
    CipherloopError,
    InvalidCiphertext,
    KeyMaterialError,
    ParameterMismatch,
)
from cipherloop.learn import EnclaveProcess

WINDOW = 8


@pytest.fixture(scope="module")
def small_params_key() -> SecretContext:
    """A key under other CKKS parameters (N=4096)."""
    return SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))


@pytest.fixture(scope="module")
def secrets(owner_key: SecretContext, host_context: PublicContext) -> list[bytes]:
    """Bytes no error may show: the secret key file, its raw secret key, and a ciphertext.

    The key file's CBOR framing (``format``, ``kind``: plain words) is searched
    only as part of the whole file; the raw key and ciphertext are searched alone.
    """
    ct = host_context.encrypt(np.arange(8.0)).to_bytes()
    return [owner_key.export_secret(), ct, _raw_secret(owner_key)]


def _raw_secret(key: SecretContext) -> bytes:
    raw: bytes = cbor2.loads(key.export_secret())["keys"]["secret_key"]
    return raw


def _texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), *(repr(a) for a in exc.args), *(repr(v) for v in vars(exc).values())]


@functools.lru_cache(maxsize=16)
def _forms(blob: bytes) -> tuple[str, str]:
    return blob.hex(), base64.b64encode(blob).decode()


def _leaks(text: str, blob: bytes) -> bool:
    """Whether ``text`` holds WINDOW consecutive bytes of ``blob`` as raw bytes, hex or base64.

    Runs of printable ASCII in ``text`` are words (a message may name the file format,
    whose name sits in the key file's framing); only other bytes count as raw.
    """
    raw = re.sub(rb"[ -~]{4,}", b"\x00", text.encode("utf-8", "surrogateescape"))
    if any(raw[i:i + WINDOW] in blob for i in range(len(raw) - WINDOW + 1)):
        return True
    hexed, b64 = _forms(blob)
    tokens = re.findall(rf"[0-9A-Za-z+/=_-]{{{2 * WINDOW},}}", text)
    return any(t.lower() in hexed or t in b64 for t in tokens)


def assert_clean(exc: BaseException, secrets: list[bytes]) -> None:
    """The error says what went wrong and nothing of the bytes it was handed."""
    assert isinstance(exc, CipherloopError)
    assert not any(isinstance(a, bytes | bytearray | memoryview) for a in exc.args)
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    for text in _texts(exc):
        assert len(text) < 400, text
        assert "\\x" not in text, text  # a bytes repr (b'\xa5...') is never part of a message
        for blob in secrets:
            assert not _leaks(text, blob), text


def _raised(fn: Callable[[], Any], kind: type[BaseException]) -> BaseException:
    with pytest.raises(kind) as info:
        fn()
    assert type(info.value) is kind, type(info.value)
    return info.value


def test_the_leak_check_would_see_bytes_hex_and_base64(secrets: list[bytes]) -> None:
    blob = secrets[0][100:100 + WINDOW]
    for shown in (blob.decode("latin-1"), blob.hex(), base64.b64encode(secrets[0][99:123]).decode()):
        with pytest.raises(AssertionError):
            assert_clean(InvalidCiphertext(f"bad: {shown}"), secrets)
    with pytest.raises(AssertionError):
        assert_clean(InvalidCiphertext("bad", secrets[1]), secrets)
    with pytest.raises(AssertionError):
        assert_clean(InvalidCiphertext(f"bad: {secrets[2][40:60]!r}"), secrets)
    assert_clean(_chained(secrets[1], suppress=True), secrets)
    with pytest.raises(AssertionError):
        assert_clean(_chained(secrets[1], suppress=False), secrets)


def _chained(blob: bytes, *, suppress: bool) -> InvalidCiphertext:
    try:
        try:
            raise ValueError(blob[:64])
        except ValueError as low:
            raise InvalidCiphertext("chained") from (None if suppress else low)
    except InvalidCiphertext as exc:
        return exc
    raise AssertionError("unreachable")


def test_malformed_batch_bytes(secrets: list[bytes], host_context: PublicContext) -> None:
    good = CiphertextBatch(host_context.params.digest(), host_context.key_id, {"kind": "x"},
                           (secrets[1],)).to_bytes()
    for data in (good[:-1], good[: len(good) // 2], secrets[0], secrets[1], b"\xa1" + secrets[1]):
        assert_clean(_raised(lambda d=data: CiphertextBatch.from_bytes(d), InvalidCiphertext), secrets)
    assert_clean(_raised(lambda: CiphertextBatch.from_bytes(good, max_bytes=100), InvalidCiphertext),
                 secrets)


def test_malformed_ciphertext_bytes(secrets: list[bytes], host_context: PublicContext,
                                    owner_key: SecretContext) -> None:
    ct = secrets[1]
    for data in (ct[:-7], ct[: len(ct) // 2], ct[:40] + secrets[0][:2000], secrets[0], b""):
        for ctx in (host_context, owner_key):
            err = _raised(lambda c=ctx, d=data: c.load_ciphertext(d), InvalidCiphertext)
            assert_clean(err, secrets)


def test_ciphertexts_under_other_parameters(secrets: list[bytes], host_context: PublicContext,
                                            small_params_key: SecretContext) -> None:
    foreign = small_params_key.encrypt(np.arange(4.0)).to_bytes()
    leak = [*secrets, foreign, small_params_key.export_secret()]
    err = _raised(lambda: host_context.load_ciphertext(foreign), InvalidCiphertext)
    assert_clean(err, leak)
    batch = CiphertextBatch.of(small_params_key, [small_params_key.encrypt(np.ones(4))],
                               {"kind": "samples"})
    err = _raised(lambda: batch.open(host_context), ParameterMismatch)
    assert "parameters" in str(err)
    assert_clean(err, leak)


def test_ciphertexts_under_another_key(secrets: list[bytes], host_context: PublicContext,
                                       other_key: SecretContext) -> None:
    theirs = other_key.encrypt(np.arange(4.0))
    batch = CiphertextBatch.of(other_key, [theirs], {"kind": "samples"})
    leak = [*secrets, theirs.to_bytes(), other_key.export_secret()]
    err = _raised(lambda: batch.open(host_context), ParameterMismatch)
    assert "another key" in str(err)
    assert_clean(err, leak)
    err = _raised(lambda: batch.open(host_context, count=2), ParameterMismatch)
    assert_clean(err, leak)


def test_wrong_count(secrets: list[bytes], host_context: PublicContext) -> None:
    batch = CiphertextBatch.of(host_context, [host_context.load_ciphertext(secrets[1])], {})
    assert_clean(_raised(lambda: batch.open(host_context, count=2), InvalidCiphertext), secrets)


def test_malformed_key_files(secrets: list[bytes], owner_key: SecretContext) -> None:
    key = secrets[0]
    public = owner_key.public_context().serialize()
    doc = cbor2.loads(key)
    spliced = dict(doc)
    spliced["key_id"] = "0" * len(str(doc.get("key_id", "")))
    for data in (key[:-1], key[: len(key) // 3], secrets[1], cbor2.dumps(spliced)):
        assert_clean(_raised(lambda d=data: SecretContext.load_secret(d), KeyMaterialError),
                     [*secrets, public])
        assert_clean(_raised(lambda d=data: PublicContext.load(d), KeyMaterialError), [*secrets, public])
    assert_clean(_raised(lambda: SecretContext.load_secret(public), KeyMaterialError), [*secrets, public])


@pytest.mark.slow
def test_enclave_refusals_of_bad_ciphertexts(secrets: list[bytes], enclave: EnclaveProcess,
                                             owner_key: SecretContext, other_key: SecretContext,
                                             host_context: PublicContext) -> None:
    """Through the real enclave process: its refusals come back as clean errors."""
    ct = secrets[1]
    layout = {"kind": "replicated", "n_values": 8, "period": 8, "slots": 4096}
    mine = host_context.params.digest(), owner_key.key_id
    foreign = CiphertextBatch.of(other_key, [other_key.encrypt(np.ones(8))], layout).to_bytes()
    cases: list[tuple[bytes, type[CipherloopError]]] = [
        (ct, InvalidCiphertext),                                             # not a batch at all
        (CiphertextBatch(*mine, layout, (ct[:-9],)).to_bytes(), InvalidCiphertext),  # truncated item
        (CiphertextBatch(*mine, layout, (secrets[0][:4096],)).to_bytes(), InvalidCiphertext),
        (foreign, ParameterMismatch),                                        # another owner's key
    ]
    leak = [*secrets, foreign]
    for raw, kind in cases:
        err = _raised(lambda r=raw: enclave.client.refresh(owner_key.key_id, [r]), kind)
        assert_clean(err, leak)
    # and the enclave still serves afterwards
    good = CiphertextBatch(*mine, layout, (ct,)).to_bytes()
    assert len(enclave.client.refresh(owner_key.key_id, [good])) == 1
