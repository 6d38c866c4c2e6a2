"""The offline user-data's fetch step (cloud-init/user-data-offline.yaml, secrets-agent-1-fetch) run
on this host against local stand-ins: the strict IMDSv2 fake for the role's credentials and a small
HTTP server for S3 that redirects, answers too much, or records what it was asked. A host without
an IPv4 default route (a network namespace of the test's own) picks S3's dual-stack name."""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools.fakeimds import FakeImds
from devtools.netns import inside, ip, lone_namespace
from tests.packaging.conftest import REPO, skip_unless_root

USER_DATA = REPO / "cloud-init" / "user-data-offline.yaml"
PACKAGE = "s3://releases/secrets-agent/secrets-agent-0.1.0-linux.tar.gz"
BODY = b"not really a tarball\n"
# The step's cap on the package's size.
MAX_PACKAGE_BYTES = 64 << 20


def fetch_program() -> str:
    """The Python program the fetch step runs (its heredoc), as cloud-init writes it."""
    files = yaml.safe_load(USER_DATA.read_text(encoding="utf-8"))["write_files"]
    [script] = [entry["content"] for entry in files if entry["path"].endswith("/secrets-agent-1-fetch")]
    return script.split("<<'PYTHON'\n", 1)[1].rsplit("PYTHON\n", 1)[0]


class FakeS3(http.server.ThreadingHTTPServer):
    """Answers every GET as `mode` says and records each request's path and headers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _S3Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _S3Handler(http.server.BaseHTTPRequestHandler):
    server: FakeS3

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        mode = self.server.mode
        if mode == "redirect":
            self.send_response(301)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere")
            self.send_header("x-amz-bucket-region", "us-west-2")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "claims-too-much":
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_PACKAGE_BYTES + 1))
            self.end_headers()
            self.wfile.write(BODY)
        elif mode == "streams-too-much":
            self.send_response(200)  # no Content-Length: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                for _ in range(MAX_PACKAGE_BYTES // len(chunk) + 2):
                    self.wfile.write(chunk)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_s3(mode: str) -> Iterator[FakeS3]:
    server = FakeS3(mode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    """The strict IMDSv2 fake on 127.0.0.1, in eu-west-1."""
    with FakeImds(host="127.0.0.1", region="eu-west-1", role="instance-role") as fake:
        yield fake


def fetch(
    folder: Path, imds_url: str, s3_url: str, bucket_region: str = "", netns: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the fetch program as the step does (argv: package, IMDS, S3, folder, bucket region)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, sys.executable, "-", PACKAGE, imds_url, s3_url, str(folder), bucket_region],
        input=fetch_program(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fetch_step_signs_for_the_instances_region_and_saves_the_package(
    tmp_path: Path, imds: FakeImds
) -> None:
    """With no bucket region set, the GET is signed for the instance's region and the package saved."""
    with fake_s3("ok") as s3:
        result = fetch(tmp_path, imds.url, s3.url)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "package.tar.gz").read_bytes() == BODY
    [(path, headers)] = s3.requests
    assert path == "/releases/secrets-agent/secrets-agent-0.1.0-linux.tar.gz"
    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]


def test_fetch_step_signs_for_the_bucket_region_when_set(tmp_path: Path, imds: FakeImds) -> None:
    """SECRETS_AGENT_BUCKET_REGION makes the signature's scope the bucket's region, not the instance's."""
    with fake_s3("ok") as s3:
        result = fetch(tmp_path, imds.url, s3.url, bucket_region="us-west-2")
    assert result.returncode == 0, result.stderr
    [(_, headers)] = s3.requests
    assert "/us-west-2/s3/aws4_request" in headers["Authorization"]


def test_fetch_step_refuses_a_redirect_and_names_the_buckets_region(tmp_path: Path, imds: FakeImds) -> None:
    """A redirect is not followed (it would carry the signed headers elsewhere): the step fails,
    naming the bucket's region and the setting to fix, and leaves no file."""
    with fake_s3("redirect") as s3:
        result = fetch(tmp_path, imds.url, s3.url)
    assert result.returncode == 1
    assert len(s3.requests) == 1
    assert (
        "S3 answered 301 Moved Permanently for s3://releases/secrets-agent/secrets-agent-0.1.0-linux.tar.gz: "
        "the bucket is in us-west-2, not eu-west-1 (redirects are not followed): set "
        "SECRETS_AGENT_BUCKET_REGION"
    ) in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["claims-too-much", "streams-too-much"])
def test_fetch_step_refuses_a_package_over_its_size_cap(tmp_path: Path, imds: FakeImds, mode: str) -> None:
    """An answer larger than 64 MiB, by its Content-Length or by what it streams, is refused and
    nothing is left in the folder (it is RAM)."""
    with fake_s3(mode) as s3:
        result = fetch(tmp_path, imds.url, s3.url)
    assert result.returncode == 1
    assert f"is larger than {MAX_PACKAGE_BYTES} bytes, which no release is: refused" in result.stderr
    assert s3.requests
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("default_route", "host"), [(False, "s3.dualstack.eu-west-1"), (True, "s3.eu-west-1")]
)
def test_fetch_step_uses_s3s_dual_stack_name_without_an_ipv4_default_route(
    tmp_path: Path, default_route: bool, host: str
) -> None:
    """With S3_ENDPOINT empty, a host with no IPv4 default route asks S3's dual-stack name, one with
    a default route the IPv4 name (in a namespace of the test's own with nothing to answer, so the
    name shows in the step's error and nothing leaves this machine)."""
    skip_unless_root("a network namespace")
    with lone_namespace(f"sa-fetch-{default_route:d}") as namespace:
        if default_route:
            ip("-n", namespace, "route", "add", "default", "dev", "lo")
        fake = FakeImds(host="127.0.0.1", region="eu-west-1", role="instance-role")
        inside(namespace, fake.start)
        try:
            result = fetch(tmp_path, fake.url, "", netns=namespace)
        finally:
            fake.stop()
    assert result.returncode == 1
    found = re.search(r"S3 at (\S+) did not answer", result.stderr)
    assert found is not None, result.stderr
    assert found.group(1) == f"{host}.amazonaws.com"
