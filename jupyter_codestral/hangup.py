"""Whether the browser has already hung up, checked without waiting.

Under load a request can wait in the server until after its browser gave up
(a newer keystroke aborted the fetch): such a request must neither cost a
backend call nor replace a newer one.
"""

from __future__ import annotations

import socket

from tornado.httputil import HTTPServerRequest


def peer_closed(sock: socket.socket | None) -> bool:
    """True if the other end has closed ``sock`` and sent nothing more (a non-blocking peek)."""
    if sock is None:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing more sent yet
    except ValueError:
        return False  # TLS sockets cannot peek at raw bytes: assume it is still there
    except OSError:
        return True


def client_gone(request: HTTPServerRequest) -> bool:
    """Whether the client of ``request`` has closed its connection."""
    stream = getattr(request.connection, "stream", None)
    if stream is None:
        return False
    return bool(stream.closed()) or peer_closed(stream.socket)
