"""lab.ports: a free port, and the one-line refusal of an address a server could not listen on."""

from __future__ import annotations

import socket

import pytest

from lab.errors import LabError
from lab.ports import LOOPBACK, check_listen, free_port


def test_a_free_port_can_be_listened_on_and_then_is_refused_while_taken() -> None:
    port = free_port()
    assert 1 <= port <= 65535
    check_listen(LOOPBACK, port)  # free: no error, and nothing is left bound
    with socket.socket() as plain:  # no SO_REUSEADDR: any socket the check left on the port would refuse this
        plain.bind((LOOPBACK, port))
        plain.listen()
    with socket.socket() as taken:
        taken.bind((LOOPBACK, port))
        taken.listen()
        with pytest.raises(LabError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(.+\): pass another --port"):
            check_listen(LOOPBACK, port)
    check_listen(LOOPBACK, port)  # released: free again


def test_port_zero_and_a_name_for_this_machine_are_accepted() -> None:
    check_listen(LOOPBACK, 0)
    check_listen("localhost", free_port())


@pytest.mark.parametrize("host,needle", [("999.1.1.1", "--host 999.1.1.1: not an address"),
                                         ("203.0.113.9", "cannot listen on 203.0.113.9"),  # TEST-NET-3: not ours
                                         ("no such host", "--host no such host")])
def test_an_address_that_is_not_this_machines_is_refused_in_one_line(host: str, needle: str) -> None:
    with pytest.raises(LabError) as e:
        check_listen(host, free_port())
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)
