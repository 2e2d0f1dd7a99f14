"""Length-prefixed CBOR frames on real sockets: the enclave link's only wire format.

Fast unit tests of ``cipherloop/enclave/framing.py``; the enclave process's answers
to bad frames are tested in ``test_enclave.py``.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import cbor2
import pytest

from cipherloop.enclave import framing
from cipherloop.enclave.framing import PeerClosed, recv_frame, send_frame
from cipherloop.errors import ProtocolError


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_frame_is_a_big_endian_length_and_a_cbor_map(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = {"op": "hello", "id": 3, "args": {"blob": b"\x00\x01"}}
    send_frame(a, msg)
    body = cbor2.dumps(msg)
    raw = b.recv(4 + len(body) + 10)
    assert raw == struct.pack(">I", len(body)) + body
    assert framing.PROTOCOL == "cipherloop-enclave/v1"
    assert framing.DEFAULT_MAX_FRAME == 256 * 1024 * 1024


def test_frames_round_trip_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {"n": 1})
    send_frame(a, {"n": 2, "b": b"x" * 100})
    assert recv_frame(b) == {"n": 1}
    assert recv_frame(b) == {"n": 2, "b": b"x" * 100}


def test_a_frame_larger_than_the_socket_buffer_arrives_whole(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = {"blob": bytes(range(256)) * 8192}  # 2 MiB: many partial reads
    sender = threading.Thread(target=send_frame, args=(a, msg))
    sender.start()
    got = recv_frame(b)
    sender.join()
    assert got == msg


def test_frame_at_the_limit_is_read_and_one_over_is_refused_unread(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    body = cbor2.dumps({"k": b"v" * 20})
    a.sendall(struct.pack(">I", len(body)) + body)
    assert recv_frame(b, max_bytes=len(body)) == {"k": b"v" * 20}
    a.sendall(struct.pack(">I", len(body) + 1))  # no body follows: refused before reading it
    with pytest.raises(ProtocolError, match="exceeds") as info:
        recv_frame(b, max_bytes=len(body))
    assert type(info.value) is ProtocolError


def test_peer_closing_between_frames_is_peer_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(PeerClosed):
        recv_frame(b)


@pytest.mark.parametrize("sent", [
    b"\x00\x00",                          # half a header
    struct.pack(">I", 10) + b"\xa1\x61",  # a header, then part of the body
])
def test_truncated_frame_is_a_protocol_error_not_a_clean_close(
        pair: tuple[socket.socket, socket.socket], sent: bytes) -> None:
    a, b = pair
    a.sendall(sent)
    a.close()
    with pytest.raises(ProtocolError, match="truncated") as info:
        recv_frame(b)
    assert type(info.value) is ProtocolError


@pytest.mark.parametrize(("body", "match"), [
    (b"\xff\xff\xff", "not valid CBOR"),
    (cbor2.dumps([1, 2]), "not a map"),
    (cbor2.dumps("op"), "not a map"),
])
def test_malformed_body_is_a_protocol_error(pair: tuple[socket.socket, socket.socket],
                                            body: bytes, match: str) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match=match) as info:
        recv_frame(b)
    assert info.value.__cause__ is None and info.value.__suppress_context__ in (True, False)


def test_empty_map_frame_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {})
    assert recv_frame(b, max_bytes=1) == {}
