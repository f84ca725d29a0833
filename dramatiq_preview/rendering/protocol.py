"""The wire between a worker and its render children: framed JSON over a Unix socket.

A frame is ``!II`` (JSON length, payload length), a JSON object, then raw payload bytes
(an encoded output).  The parent sends the source's descriptor with ``SCM_RIGHTS`` alongside
a job frame.  JSON, never pickle: a child that hostile input took over must not be able to
run code in the worker by what it sends back.
"""

from __future__ import annotations

import array
import json
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

_HEADER = struct.Struct("!II")
#: A frame's JSON part is small; refuse anything absurd from a confused peer.
MAX_JSON = 1 << 20
MAX_PAYLOAD = 256 << 20


class ChannelClosed(Exception):
    """The other end closed the socket (or died)."""


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


class Channel:
    """One end of a render socket.

    Parameters:
      sock: A connected ``AF_UNIX`` ``SOCK_STREAM`` socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._fds: list[int] = []
        self._pending = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(
        self,
        message: dict[str, Any],
        payload: bytes = b"",
        fds: Sequence[int] = (),
        *,
        hold: bool = False,
    ) -> None:
        """Send one frame (with ``fds`` attached), or keep it for the next send if ``hold``.

        Holding lets a child send its last output and "done" in one write: one wake-up of
        the worker instead of two.
        """
        body = json.dumps(message, separators=(",", ":")).encode()
        self._pending += _HEADER.pack(len(body), len(payload)) + body + payload
        if hold:
            return
        data, self._pending = bytes(self._pending), bytearray()
        try:
            if fds:
                sent = self.sock.sendmsg(
                    [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(str(exc)) from None

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], bytes, list[int]] | None:
        """The next frame, or ``None`` when ``timeout`` seconds passed without a whole one.

        Raises:
          ChannelClosed: end of file.
          ProtocolError: garbage.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                ready, _, _ = select.select([self.sock], [], [], remaining)
                if not ready:
                    return None
            self._fill()

    def _fill(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(
                1 << 20, socket.CMSG_SPACE(4 * array.array("i").itemsize)
            )
        except (ConnectionResetError, BrokenPipeError):
            data, ancillary = b"", []
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
                self._fds.extend(fds)
        if not data:
            raise ChannelClosed("end of file")
        self._buffer += data

    def _parse(self) -> tuple[dict[str, Any], bytes, list[int]] | None:
        if len(self._buffer) < _HEADER.size:
            return None
        json_len, payload_len = _HEADER.unpack_from(self._buffer)
        if json_len > MAX_JSON or payload_len > MAX_PAYLOAD:
            raise ProtocolError("frame too large")
        total = _HEADER.size + json_len + payload_len
        if len(self._buffer) < total:
            return None
        start = _HEADER.size
        try:
            message = json.loads(bytes(self._buffer[start : start + json_len]))
        except ValueError:
            raise ProtocolError("frame is not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("frame is not a JSON object")
        payload = bytes(self._buffer[start + json_len : total])
        del self._buffer[:total]
        fds, self._fds = self._fds, []
        return message, payload, fds
