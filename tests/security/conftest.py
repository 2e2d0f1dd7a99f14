"""The adversarial suite: the test plays the malicious host.

The host holds only what DESIGN.md gives it -- the public context and the
ciphertexts it stores -- and may send the enclave anything. Each test builds
two *worlds* that differ only in a secret the host must not learn (a stored
value, small in one world and at or beyond the encoder's bounds in the
other), runs the same attack in both, and compares what the host sees:
which calls succeed, error types and messages, and the shape of every reply.

The enclave here is the real :class:`~cipherloop.enclave.server.Enclave`
dispatch (the exact replies the socket server frames), in-process so a
test can afford hundreds of calls; restart and second-process tests start
real enclave processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import World, make_world

from cipherloop.ckks import PublicContext, SecretContext, preset, rotations_for_features


@pytest.fixture(scope="session")
def sec_key() -> SecretContext:
    return SecretContext.generate(preset("n8192"), rotations_for_features(8, 4096))


@pytest.fixture(scope="session")
def host(sec_key: SecretContext) -> PublicContext:
    """All the host has: the public context, as bytes it was sent."""
    return PublicContext.load(sec_key.public_context().serialize())


@pytest.fixture
def worlds(tmp_path: Path, sec_key: SecretContext) -> Iterator[tuple[World, World]]:
    a, b = make_world(tmp_path / "a", sec_key), make_world(tmp_path / "b", sec_key)
    yield a, b
    a.enclave.close()
    b.enclave.close()


