"""Local AWS fakes for integration tests: moto's server on 127.0.0.1, and a recording proxy that can
answer chosen requests itself (throttling, denials, slow answers) and forwards the rest to moto."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import urlsplit

from moto.server import ThreadedMotoServer

LOOPBACK = "127.0.0.1"


def start_moto_server() -> tuple[ThreadedMotoServer, str]:
    """Start moto's server on 127.0.0.1 on a free port; return it and its URL."""
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server for the duration of a `with` block; yields its URL."""
    server, url = start_moto_server()
    try:
        yield url
    finally:
        server.stop()


def moto_api(url: str, action: str, data: bytes = b"") -> None:
    """POST to one of moto's own endpoints (/moto-api/ACTION)."""
    # No proxy: the request must go straight to 127.0.0.1 whatever the environment says. Not a form
    # either: moto reads the raw body, which Flask empties for form-encoded requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{url}/moto-api/{action}", data=data, method="POST", headers={"Content-Type": "text/plain"}
    )
    with opener.open(request, timeout=10) as response:
        response.read()


def reset_moto(url: str) -> None:
    """Forget every resource moto holds (its documented reset API)."""
    moto_api(url, "reset")


@dataclass(frozen=True)
class CannedResponse:
    """An answer the proxy gives instead of forwarding: status, headers, body, optional delay."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    delay_seconds: float = 0.0


def aws_json_error(code: str, message: str, status: int = 400) -> CannedResponse:
    """An AWS JSON-protocol error as SSM sends it (body __type plus x-amzn-ErrorType header)."""
    body = json.dumps({"__type": code, "message": message}).encode()
    return CannedResponse(
        status=status,
        body=body,
        headers=(
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/com.amazonaws.ssm/"),
            ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
        ),
    )


def forward_request(
    upstream: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> CannedResponse:
    """Send one request to `upstream` as it came and return its whole answer, minus hop-by-hop headers."""
    parts = urlsplit(upstream)
    connection = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        kept = tuple(
            (name, value)
            for name, value in response.getheaders()
            if name.lower() not in {"content-length", "transfer-encoding", "connection", "server", "date"}
        )
        return CannedResponse(status=response.status, body=payload, headers=kept)
    finally:
        connection.close()


def send_canned(
    handler: BaseHTTPRequestHandler, canned: CannedResponse, sent: Optional[bytes] = None
) -> None:
    """Write `canned` as the handler's answer. `sent`, a part of its body, goes out in place of the whole
    under the whole body's Content-Length (a body cut short)."""
    # A Date header in the answer replaces the server's own.
    if any(name.lower() == "date" for name, _ in canned.headers):
        handler.send_response_only(canned.status)
    else:
        handler.send_response(canned.status)
    for name, value in canned.headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(canned.body)))
    handler.end_headers()
    handler.wfile.write(canned.body if sent is None else sent)


# Given the request's number (from 0) and its action ("GetParameters"), a canned answer, or None
# to forward the request to the upstream server.
Responder = Callable[[int, str], Optional[CannedResponse]]
# Given upstream's answer, the request's headers and body, the answer to send instead.
Rewriter = Callable[[CannedResponse, dict[str, str], bytes], CannedResponse]


_Served = TypeVar("_Served", bound="LoopbackServer")


class LoopbackServer:
    """An HTTP server on 127.0.0.1 served from a thread: its URL, start and stop, or use in `with`."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer,
    ) -> None:
        self._server = server_class((LOOPBACK, 0), handler)
        self._server.daemon_threads = True
        # A short poll interval lets shutdown() return in milliseconds rather than half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Begin serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self: _Served) -> _Served:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RecordingProxy(LoopbackServer):
    """An HTTP server on 127.0.0.1 that records each AWS action it receives, server side.

    It forwards requests to `upstream` (moto) unless `responder` answers them itself, and passes
    upstream's answers through `rewrite` when one is given. The Host header is forwarded unchanged,
    so requests signed with SigV4 still verify upstream. A Date header in an answer replaces the
    proxy's own.
    """

    def __init__(
        self,
        upstream: Optional[str],
        responder: Optional[Responder] = None,
        rewrite: Optional[Rewriter] = None,
    ) -> None:
        self.upstream = upstream
        self.responder = responder
        self.rewrite = rewrite
        self.actions: list[str] = []
        # The JSON body of each request, in the same order as `actions`.
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two sends: with Nagle's algorithm on, the body would wait
            # for the client's delayed ACK, about 40 ms a call.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                action = target.rpartition(".")[2]
                with proxy._lock:
                    index = len(proxy.actions)
                    proxy.actions.append(action)
                    proxy.bodies.append(body)
                canned = proxy.responder(index, action) if proxy.responder else None
                if canned is None:
                    headers = dict(self.headers.items())
                    canned = proxy._forward(self.path, headers, body)
                    if proxy.rewrite is not None:
                        canned = proxy.rewrite(canned, headers, body)
                if canned.delay_seconds:
                    time.sleep(canned.delay_seconds)
                # The client may have given up (a read timeout under test).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    send_canned(self, canned)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)

    def count(self, action: str) -> int:
        """How many requests for `action` arrived."""
        with self._lock:
            return self.actions.count(action)

    def requests(self, action: str) -> list[dict[str, Any]]:
        """The parsed JSON bodies of the requests for `action` that arrived, in order."""
        with self._lock:
            pairs = list(zip(self.actions, self.bodies))
        return [json.loads(body) for name, body in pairs if name == action]

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> CannedResponse:
        if self.upstream is None:
            raise RuntimeError("RecordingProxy has no upstream and the responder did not answer")
        return forward_request(self.upstream, "POST", path, headers, body)


def admin_ssm_client(url: str, region: str = "eu-west-1") -> Any:
    """A plain boto3 SSM client on moto's server, for tests to create and change parameters."""
    return admin_client("ssm", url, region)


def admin_client(service: str, url: str, region: str = "eu-west-1") -> Any:
    """A plain boto3 client of `service` (ssm, secretsmanager) on moto's server, for tests to create and
    change what the agent reads."""
    import boto3

    # moto accepts any key; these never leave 127.0.0.1.
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
