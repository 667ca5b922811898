"""A free TCP port on 127.0.0.1, for test servers and MASTER_PORT (test-only: the package never picks ports)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now (it can be taken by another process before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
