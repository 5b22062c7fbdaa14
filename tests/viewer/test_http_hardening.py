"""The viewer's HTTP server against hostile clients (issue 28 finding 15), on 127.0.0.1
with raw sockets: a body on GET is never read as a second request, a foreign Host header
is refused (DNS rebinding), idle connections time out, connections are bounded, and a
client reset leaves no traceback. A stand-in scene: no model is needed for these."""

import http.client
import json
import socket
import struct
import time

import pytest

from gphm.viewer import ViewerServer


class StubScene:
    def options(self):
        return {"subjects": ["a"]}


@pytest.fixture
def served():
    with ViewerServer(StubScene(), "127.0.0.1", 0, idle_timeout=0.5, max_connections=2) as s:
        yield s


def _read_all(s: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``limit`` seconds pass)."""
    s.settimeout(limit)
    chunks, end = [], time.monotonic() + limit
    while time.monotonic() < end:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _get(port: int, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", "/api/options", skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    r = conn.getresponse()
    status, body = r.status, r.read()
    conn.close()
    return status, body


def test_a_body_on_get_is_refused_not_read_as_a_second_request(served):
    smuggled = f"GET /api/options HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n"
    request = (f"GET /api/options HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
               f"Content-Length: {len(smuggled)}\r\n\r\n{smuggled}")  # fmt: skip
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(request.encode())
        reply = _read_all(s)
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # one answer, the connection closed
    assert reply.startswith(b"HTTP/1.1 400") and b"carries no body" in reply
    chunked = (f"GET /api/options HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(chunked.encode())
        assert _read_all(s).startswith(b"HTTP/1.1 400")


def test_only_this_servers_host_is_answered():
    # Eight requests one after another: with the `served` fixture's 2 connection slots a
    # finished request's handler thread, still closing on a loaded machine, could take a
    # slot the next one needed (a 503, not what this test is about).
    with ViewerServer(StubScene(), "127.0.0.1", 0, idle_timeout=0.5) as served:
        _check_hosts(served.port)


def _check_hosts(port: int) -> None:
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, body = _get(port, host)
        assert status == 200 and json.loads(body) == {"subjects": ["a"]}, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}",
                 f"localhost.evil.example:{port}", "127.0.0.1:x"):  # fmt: skip
        status, body = _get(port, host)
        assert status == 403 and "is not this viewer" in json.loads(body)["error"], host


def test_idle_connections_time_out_and_connections_are_bounded(served):
    port = served.port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    assert _read_all(idle, limit=10) == b""  # closed by the server, not held forever
    assert time.monotonic() - t0 < 8
    idle.close()
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    for s in held:
        s.sendall(b"GET /api/options HTTP/1.1\r\n")  # half a request
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
        assert _read_all(third).startswith(b"HTTP/1.1 503")
    for s in held:
        s.close()
    for _ in range(100):  # the two slots come back
        if _get(port, f"127.0.0.1:{port}")[0] == 200:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server did not serve again after the held connections closed")


def test_a_client_reset_leaves_no_traceback(served, capsys):
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        s.sendall(f"GET /api/options HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n".encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST: ConnectionResetError in the server's read
    time.sleep(2.0)
    assert _get(served.port, f"127.0.0.1:{served.port}")[0] == 200
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
