"""The TCP ports the lab's servers listen on: a free one, or a clear refusal before a server starts.

    from lab.ports import check_listen, free_port
    port = free_port()                 # free on 127.0.0.1 a moment ago (the OS picks it)
    check_listen("127.0.0.1", 8000)    # LabError: "cannot listen on 127.0.0.1:8000 (Address already in use): ..."

``lab dashboard`` and ``lab serve`` call ``check_listen`` before they start: a taken port or an address
that is not this machine's is one line and exit 2, not a traceback from the server after the model loaded.
"""

from __future__ import annotations

import os
import socket

from lab.errors import LabError

LOOPBACK = "127.0.0.1"
"""Where the lab's servers listen unless told otherwise: this machine only."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listened on at ``host`` a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_listen(host: str, port: int) -> None:
    """Refuse, in one line, a ``host:port`` this machine cannot listen on now (taken, or not its address).

    Binds every address ``host`` resolves to, as asyncio's ``create_server`` (uvicorn) will, with the same
    socket options, then lets go.
    """
    try:  # resolve as the server will (a name, an IPv4 or an IPv6 address)
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise LabError(f"--host {host}: not an address or a name this machine resolves ({e}): give an address "
                       f"of this machine, e.g. {LOOPBACK} (the default)") from None
    for family, kind, proto, _, addr in found:
        with socket.socket(family, kind, proto) as s:
            if os.name == "posix":  # as asyncio: TIME_WAIT is no conflict (on Windows it would share a taken port)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: "::" does not also take the IPv4 port
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                raise LabError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port, or "
                               "--host with an address of this machine") from None
