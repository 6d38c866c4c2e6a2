"""A strict IMDSv2 server for tests and the demo: tokens are required on every read, as on an
instance with `--http-tokens required`, and failure modes (disabled, slow, late, 5xx) are knobs.

Run it alone with `python -m devtools.fakeimds --port 0 --region eu-west-1 --role app-role`;
it prints its URL on one line and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

TOKEN_PATH = "/latest/api/token"  # noqa: S105
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
MIN_TOKEN_TTL_SECONDS = 1
MAX_TOKEN_TTL_SECONDS = 21600
CREDENTIALS_LIFETIME_SECONDS = 6 * 3600
# Idle keep-alive connections are dropped after this, so handler threads do not linger.
IDLE_CONNECTION_TIMEOUT_SECONDS = 30.0
# stop() waits up to this for the serving loop to notice; tests start and stop a fake each.
SHUTDOWN_POLL_SECONDS = 0.01

REGION_PATH = "/latest/meta-data/placement/region"
AVAILABILITY_ZONE_PATH = "/latest/meta-data/placement/availability-zone"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
ROLE_LIST_PATH = "/latest/meta-data/iam/security-credentials/"

# Obviously fake values in AWS's shapes (ASIA... is a temporary key id).
FAKE_ACCESS_KEY_ID = "ASIAFAKEIMDS00000001"
FAKE_SECRET_ACCESS_KEY = "fakeImdsSecretAccessKeyForTestsOnly00000"  # noqa: S105
FAKE_SESSION_TOKEN = "FakeImdsSessionTokenForTestsOnly//////////wEaCWV1LXdlc3QtMSJHMEUCIQ=="  # noqa: S105
FAKE_INSTANCE_ID = "i-0fa4e1fa4e1fa4e10"
GARBLED_BODY = b"<html><body>Access to this site is blocked by your proxy</body></html>"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake answered: enough to count calls, never a token."""

    method: str
    path: str
    status: int
    had_token: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeImds

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out and hang up mid-response are part of the game, not errors.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Server6(_Server):
    """The same on an IPv6 address (IMDS's fd00:ec2::254 on IPv6-only instances)."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep one connection alive across the token and the reads.
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_SECONDS
    # Buffer the response so headers and body leave in one segment: two small writes on a
    # kept-alive connection meet Nagle and delayed ACKs and cost 40 ms a request.
    wbufsize = -1

    def version_string(self) -> str:
        return "EC2ws"

    @property
    def fake(self) -> FakeImds:
        server = self.server
        assert isinstance(server, _Server)  # noqa: S101  (always true; narrows the type)
        return server.fake

    def setup(self) -> None:
        super().setup()
        self.fake._track_connection(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track_connection(self.connection, opened=False)

    def log_message(self, format: str, *args: object) -> None:
        if self.fake.log_to_stderr:
            sys.stderr.write(f"fakeimds: {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._discard_body()
        status, body, headers = self.fake._answer(self.command, self.path, self._header)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _header(self, name: str) -> Optional[str]:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def _discard_body(self) -> None:
        # An unread body would be parsed as the next request on a kept-alive connection.
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)


class FakeImds:
    """A strict IMDSv2 endpoint on 127.0.0.1 with knobs for the failure modes an agent must survive.

    Knobs are constructor arguments and plain attributes the test may change while it runs.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "eu-west-1",
        role: Optional[str] = "app-role",
        access_key_id: str = FAKE_ACCESS_KEY_ID,
        secret_access_key: str = FAKE_SECRET_ACCESS_KEY,
        session_token: str = FAKE_SESSION_TOKEN,
        credentials_code: str = "Success",
        raw_credentials_document: Optional[str] = None,
        disabled: bool = False,
        delay_seconds: float = 0.0,
        start_after_seconds: float = 0.0,
        fail_next_n: int = 0,
        fail_status: int = 503,
        garble_next_n: int = 0,
        garble_path: Optional[str] = None,
        token_lifetime_seconds: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        log_to_stderr: bool = False,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.region = region
        self.role = role
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        # Anything but "Success" makes the credentials document report a failure.
        self.credentials_code = credentials_code
        # When set, served verbatim as the role's credentials document (to test bad documents).
        self.raw_credentials_document = raw_credentials_document
        # True answers 403 to everything, as IMDS does with `--http-endpoint disabled`.
        self.disabled = disabled
        self.delay_seconds = delay_seconds
        # The port is bound at start() but refuses connections until this many seconds later.
        self.start_after_seconds = start_after_seconds
        self.fail_next_n = fail_next_n
        self.fail_status = fail_status
        # The next N answers that would be 200 carry an HTML page instead, as a captive proxy's would.
        self.garble_next_n = garble_next_n
        # When set, only answers for this path are garbled.
        self.garble_path = garble_path
        # When set, tokens die after this many seconds whatever TTL the client asked for.
        self.token_lifetime_seconds = token_lifetime_seconds
        self.clock = clock
        self.log_to_stderr = log_to_stderr

        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._issued_tokens: list[str] = []
        self._recorded: list[RecordedRequest] = []
        self._open_connections: set[socket.socket] = set()
        self._connections_accepted = 0
        self._stopping = threading.Event()
        self._listening = threading.Event()
        # Set by listen_now() (or stop()): the wait for start_after_seconds ends early.
        self._wake = threading.Event()
        self._server: Optional[_Server] = None
        self._bound_port: Optional[int] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Bind the port, start serving (after start_after_seconds) and return the base URL."""
        if self._server is not None:
            raise RuntimeError("FakeImds is already started")
        self._stopping.clear()
        self._listening.clear()
        self._wake.clear()
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.requested_port), _Handler, bind_and_activate=False)
        server.fake = self
        try:
            # Bound but not listening: connections are refused, like an IMDS that is not up yet.
            server.server_bind()
        except OSError:
            server.server_close()
            raise
        self._server = server
        self._bound_port = server.server_port
        self._thread = threading.Thread(
            target=self._serve, args=(server, self.start_after_seconds), name="fakeimds", daemon=True
        )
        self._thread.start()
        if self.start_after_seconds <= 0:
            self._listening.wait(timeout=5.0)
        return self.url

    def _serve(self, server: _Server, start_after_seconds: float) -> None:
        if start_after_seconds > 0:
            self._wake.wait(start_after_seconds)
            if self._stopping.is_set():
                return
        server.server_activate()
        self._listening.set()
        server.serve_forever(poll_interval=SHUTDOWN_POLL_SECONDS)

    def stop(self) -> None:
        """Stop serving, drop kept-alive connections and free the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        self._wake.set()
        if self._listening.is_set():
            server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = list(self._open_connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeImds:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (an ephemeral one when started with port 0); kept after stop()."""
        if self._bound_port is None:
            raise RuntimeError("FakeImds was never started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL clients use as their IMDS endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_listening(self) -> bool:
        """True once the port accepts connections."""
        return self._listening.is_set()

    def listen_now(self, timeout: float = 5.0) -> None:
        """Start accepting connections at once (IMDS came up), without waiting out start_after_seconds;
        returns once the port accepts them."""
        self._wake.set()
        if not self._listening.wait(timeout=timeout):
            raise RuntimeError(f"FakeImds at {self.url} did not start listening within {timeout} s")

    # -- test controls ---------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid, as if its TTL had run out."""
        with self._lock:
            self._tokens.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request answered so far, oldest first."""
        with self._lock:
            return list(self._recorded)

    def count(self, method: Optional[str] = None, path_prefix: Optional[str] = None) -> int:
        """How many answered requests match the method and path prefix (None matches all)."""
        return sum(
            1
            for request in self.requests
            if (method is None or request.method == method)
            and (path_prefix is None or request.path.startswith(path_prefix))
        )

    @property
    def issued_tokens(self) -> list[str]:
        """Every token issued so far, so a test can prove none of them leaked anywhere."""
        with self._lock:
            return list(self._issued_tokens)

    @property
    def connections_accepted(self) -> int:
        """How many TCP connections clients opened: 1 for a client that keeps its connection alive."""
        with self._lock:
            return self._connections_accepted

    def _track_connection(self, connection: socket.socket, *, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections_accepted += 1
                self._open_connections.add(connection)
            else:
                self._open_connections.discard(connection)

    # -- the protocol ----------------------------------------------------------------------

    def _answer(
        self, method: str, raw_path: str, get_header: Callable[[str], Optional[str]]
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.delay_seconds > 0:
            self._stopping.wait(self.delay_seconds)
        path = raw_path.split("?", 1)[0]
        token = get_header(TOKEN_HEADER)
        status, body, extra = self._route(method, path, token, get_header)
        if status == 200 and self.garble_path in (None, path) and self._take_garble():
            body, extra = GARBLED_BODY, {}
        with self._lock:
            self._recorded.append(RecordedRequest(method, path, status, token is not None))
        return status, body, extra

    def _take_garble(self) -> bool:
        with self._lock:
            if self.garble_next_n > 0:
                self.garble_next_n -= 1
                return True
            return False

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next_n > 0:
                self.fail_next_n -= 1
                return True
            return False

    def _route(
        self,
        method: str,
        path: str,
        token: Optional[str],
        get_header: Callable[[str], Optional[str]],
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.disabled:
            return 403, b"Forbidden", {}
        if self._take_failure():
            return self.fail_status, b"Service Unavailable", {}
        if path == TOKEN_PATH:
            if method != "PUT":
                return 405, b"Method Not Allowed", {"Allow": "PUT"}
            return self._issue_token(get_header)
        if method != "GET":
            return 405, b"Method Not Allowed", {"Allow": "GET"}
        # No IMDSv1: a read without a valid, unexpired token is refused whatever the path.
        if token is None or not self._is_token_valid(token):
            return 401, b"Unauthorized", {}
        body = self._metadata(path)
        if body is None:
            return 404, b"Not Found", {}
        return 200, body.encode("utf-8"), {}

    def _issue_token(self, get_header: Callable[[str], Optional[str]]) -> tuple[int, bytes, dict[str, str]]:
        # IMDS refuses tokens to requests that went through a proxy (an SSRF defence).
        if get_header("X-Forwarded-For") is not None:
            return 403, b"Forbidden", {}
        ttl_text = (get_header(TOKEN_TTL_HEADER) or "").strip()
        if not ttl_text.isdigit():
            return 400, b"Bad Request", {}
        ttl_seconds = int(ttl_text)
        if not MIN_TOKEN_TTL_SECONDS <= ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
            return 400, b"Bad Request", {}
        lifetime = float(ttl_seconds)
        if self.token_lifetime_seconds is not None:
            lifetime = min(lifetime, self.token_lifetime_seconds)
        token = secrets.token_urlsafe(40)
        with self._lock:
            self._tokens[token] = self.clock() + lifetime
            self._issued_tokens.append(token)
        return 200, token.encode("ascii"), {TOKEN_TTL_HEADER: str(ttl_seconds)}

    def _is_token_valid(self, token: str) -> bool:
        with self._lock:
            expires_at = self._tokens.get(token)
            if expires_at is None:
                return False
            if self.clock() >= expires_at:
                del self._tokens[token]
                return False
            return True

    def _metadata(self, path: str) -> Optional[str]:
        if path == REGION_PATH:
            return self.region
        if path.rstrip("/") == AVAILABILITY_ZONE_PATH:
            return f"{self.region}a"
        if path == INSTANCE_ID_PATH:
            return FAKE_INSTANCE_ID
        if path.rstrip("/") == ROLE_LIST_PATH.rstrip("/"):
            # With no instance profile IMDS has no security-credentials entry at all: 404.
            return self.role
        if self.role is not None and path == ROLE_LIST_PATH + self.role:
            return self._credentials_document()
        return None

    def _credentials_document(self) -> str:
        if self.raw_credentials_document is not None:
            return self.raw_credentials_document
        now = datetime.now(timezone.utc).replace(microsecond=0)
        document: dict[str, str] = {
            "Code": self.credentials_code,
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.credentials_code == "Success":
            expiration = now + timedelta(seconds=CREDENTIALS_LIFETIME_SECONDS)
            document.update(
                {
                    "Type": "AWS-HMAC",
                    "AccessKeyId": self.access_key_id,
                    "SecretAccessKey": self.secret_access_key,
                    "Token": self.session_token,
                    "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        return json.dumps(document, indent=2)


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fakeimds",
        description="Serve a strict fake IMDSv2 until SIGTERM; prints its base URL on one line.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--region", default="eu-west-1")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--role", default="app-role")
    role.add_argument("--no-role", action="store_true", help="no instance profile attached (404)")
    parser.add_argument("--access-key", default=FAKE_ACCESS_KEY_ID)
    parser.add_argument("--secret-key", default=FAKE_SECRET_ACCESS_KEY)
    parser.add_argument("--session-token", default=FAKE_SESSION_TOKEN)
    parser.add_argument("--disabled", action="store_true", help="answer 403 to everything")
    parser.add_argument("--start-after", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--fail-next", type=int, default=0, metavar="N", help="answer 503 N times")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the fake until SIGTERM or SIGINT."""
    args = _parse_args(argv)
    fake = FakeImds(
        host=args.host,
        port=args.port,
        region=args.region,
        role=None if args.no_role else args.role,
        access_key_id=args.access_key,
        secret_access_key=args.secret_key,
        session_token=args.session_token,
        disabled=args.disabled,
        delay_seconds=args.delay,
        start_after_seconds=args.start_after,
        fail_next_n=args.fail_next,
        log_to_stderr=args.verbose,
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    url = fake.start()
    try:
        print(url, flush=True)
        while not stop_requested.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
