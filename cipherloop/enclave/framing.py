"""Length-prefixed CBOR frames on a local stream socket.

Runs in: enclave and host (both ends of the link). A frame is a 4-byte
big-endian length and a CBOR map. The length is checked against the limit
before a byte of the body is read, so an oversized request costs nothing.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import cbor2

from ..errors import ProtocolError

PROTOCOL = "cipherloop-enclave/v1"
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")


class PeerClosed(ProtocolError):
    """The other end closed the connection between frames."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0:
                raise PeerClosed("connection closed")
            raise ProtocolError("truncated frame")
        got += k
    return bytes(buf)


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    body = cbor2.dumps(message)
    sock.sendall(_HEADER.pack(len(body)) + body)


def recv_frame(sock: socket.socket, *, max_bytes: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """Read one frame; refuse oversized or malformed ones with :class:`ProtocolError`."""
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > max_bytes:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_bytes}-byte limit")
    body = _recv_exact(sock, length)
    try:
        msg = cbor2.loads(body)
    except Exception:
        raise ProtocolError("frame body is not valid CBOR") from None
    if not isinstance(msg, dict):
        raise ProtocolError("frame body is not a map")
    return msg


