"""`status`, the metrics file and Debian's real node_exporter, on the host: the agent run by the CLI
against moto's server and the fake IMDSv2 (as the other integration tests do), node_exporter started
here on 127.0.0.1 with only its textfile collector, pointed at the agent's metrics_dir."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cli_harness import Stack
from tests.integration.test_refresh import FakeSystemd
from tests.prerequisites import require_command

REPO = Path(__file__).resolve().parents[2]
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
MARK = "st4tus-v4lue-"
RENDERS = 50
SAMPLE_RE = re.compile(r'^(secrets_agent_[a-z_]+)\{service="app"(,[a-z_]+="[^"\\\n]*")*\} -?[0-9.e+]+$')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def metrics_dir(stack: Stack, tmp_path: Path) -> Path:
    """A textfile folder like Debian's (root, 0755) named as metrics_dir in agent.toml."""
    folder = tmp_path / "node-exporter"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (stack.config / "agent.toml").write_text(f'metrics_dir = "{folder}"\n')
    return folder


@pytest.fixture
def node_exporter(metrics_dir: Path) -> Iterator[str]:
    """Debian's prometheus-node-exporter on 127.0.0.1 (a free port), textfile collector only."""
    require_command(NODE_EXPORTER.name, "prometheus-node-exporter")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(NODE_EXPORTER),
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={metrics_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    answer.read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _scrape(url: str) -> dict[str, float]:
    """node_exporter's answer as {"name{labels}": value}."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def _version(samples: dict[str, float], name: str) -> float:
    return next(
        value
        for key, value in samples.items()
        if key.startswith("secrets_agent_parameter_version{") and f'parameter="{name}"' in key
    )


def _values(count: int) -> dict[str, str]:
    return {f"/app/p{i}": f"{MARK}{i}-{os.urandom(4).hex()}" for i in range(count)}


def _template(stack: Stack, values: dict[str, str]) -> None:
    for name, value in values.items():
        stack.put(name, value)
    stack.template("".join(f'K{i}={{{{ param("{name}") }}}}\n' for i, name in enumerate(values)))


def test_status_shows_the_versions_just_rendered_and_never_a_value(stack: Stack) -> None:
    """After a render, `status app` lists each parameter with its version and exits 0; --json parses
    and says the same; neither holds any value."""
    values = _values(3)
    _template(stack, values)
    stack.put("/app/p1", values["/app/p1"] + "x")  # version 2
    values["/app/p1"] += "x"
    assert stack.run("render", "app")[0] == 0

    code, out, err = stack.run("status", "app")
    assert code == 0, err
    assert "app: healthy" in out
    assert re.search(r"/app/p1\s+version 2", out), out
    assert re.search(r"/app/p0\s+version 1", out), out
    code, out_json, _ = stack.run("status", "app", "--json")
    assert code == 0
    document = json.loads(out_json)
    assert document["healthy"] is True
    (service,) = document["services"]
    assert {p["name"]: p["version"] for p in service["parameters"]} == {
        "/app/p0": 1,
        "/app/p1": 2,
        "/app/p2": 1,
    }
    assert service["last_render"]["ok"] is True
    assert service["last_render"]["ssm_calls"] >= 1
    for value in values.values():
        assert value not in out + out_json + err
    assert MARK not in out + out_json + err


def test_status_of_every_service_and_of_one_not_rendered(stack: Stack) -> None:
    """`status` without NAME covers every template; one never rendered is shown as not running, which
    is not a failure; an unknown NAME is a usage error that names the template to create."""
    _template(stack, _values(1))
    stack.template('X={{ param("/other/x", default="") }}\n', name="other")
    assert stack.run("render", "app")[0] == 0
    code, out, _ = stack.run("status")
    assert code == 0, out
    assert out.index("app: healthy") < out.index("other: healthy")
    assert "none since boot" in out
    code, _out, err = stack.run("status", "nosuch")
    assert code == 2
    assert "nosuch.env.j2" in err


def _read_loop(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A reader process that prints (as JSON) each distinct content of `path` it sees."""
    script = (
        "import json, sys, time\n"
        "seen = set()\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        f"        data = open({str(path)!r}).read()\n"
        "    except FileNotFoundError:\n"
        "        data = None\n"
        "    if data not in seen:\n"
        "        seen.add(data)\n"
        "        print(json.dumps(data), flush=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_node_exporter_serves_the_series_and_the_file_is_never_half_written(
    stack: Stack,
    metrics_dir: Path,
    node_exporter: str,
) -> None:
    """node_exporter serves secrets_agent_*{service="app"} with node_textfile_scrape_error 0 while the
    agent renders 50 times; a reader never sees the file half-written or holding a value; 0644."""
    values = _values(4)
    _template(stack, values)
    prom = metrics_dir / "secrets-agent-app.prom"
    assert stack.run("render", "app")[0] == 0
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644

    errors: list[float] = []
    stop = threading.Event()

    def scrape_loop() -> None:
        while not stop.is_set():
            errors.append(_scrape(node_exporter)["node_textfile_scrape_error"])

    scraper = threading.Thread(target=scrape_loop)
    reader = _read_loop(prom, seconds=600)
    scraper.start()
    try:
        for _ in range(RENDERS):
            code, _out, err = stack.run("render", "app")
            assert code == 0, err
    finally:
        stop.set()
        scraper.join()
        reader.terminate()
    contents = [json.loads(line) for line in reader.communicate(timeout=60)[0].splitlines()]

    assert len(contents) >= 2  # every render writes new times
    for text in contents:
        assert text is not None
        assert text.endswith("\n")
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        assert all(SAMPLE_RE.match(line) for line in samples), text
        assert "secrets_agent_last_render_success" in text
        assert len([s for s in samples if s.startswith("secrets_agent_parameter_version")]) == 4
        for value in values.values():
            assert value not in text
    assert errors
    assert set(errors) == {0.0}
    assert [p.name for p in metrics_dir.iterdir()] == [prom.name]  # no temporary file left

    served = _scrape(node_exporter)
    assert served["node_textfile_scrape_error"] == 0
    assert served['secrets_agent_last_render_success{service="app"}'] == 1
    assert served['secrets_agent_parameters{service="app"}'] == 4
    assert served['secrets_agent_last_render_ssm_calls{service="app"}'] >= 1


def test_a_rotation_picked_up_by_refresh_moves_the_served_version_and_change_counter(
    stack: Stack,
    metrics_dir: Path,
    node_exporter: str,
) -> None:
    """A parameter overwritten in SSM: after `refresh` (on_change = "render") node_exporter serves
    its new version and the change counters went up by one; a failed render is served as 0."""
    values = _values(2)
    _template(stack, values)
    (stack.config / "app.toml").write_text('format = "dotenv"\non_change = "render"\n')
    assert stack.run("render", "app")[0] == 0
    systemd = FakeSystemd()

    def refresh() -> int:
        return stack_main_refresh(stack, systemd)

    assert refresh() == 0
    before = _scrape(node_exporter)
    assert _version(before, "/app/p0") == 1
    assert before['secrets_agent_refresh_changes_total{service="app"}'] == 0
    assert before['secrets_agent_refresh_checks_total{service="app"}'] == 1

    stack.put("/app/p0", f"{MARK}rotated")
    assert refresh() == 0
    after = _scrape(node_exporter)
    assert _version(after, "/app/p0") == 2
    assert after['secrets_agent_refresh_changes_total{service="app"}'] == 1
    assert after['secrets_agent_last_refresh_changes{service="app"}'] == 1
    assert after['secrets_agent_refresh_checks_total{service="app"}'] == 2
    assert after['secrets_agent_last_refresh_success{service="app"}'] == 1

    stack.template('X={{ param("/app/absent") }}\n')
    assert stack.run("render", "app")[0] == 4
    failed = _scrape(node_exporter)
    assert failed['secrets_agent_last_render_success{service="app"}'] == 0
    assert failed['secrets_agent_last_render_exit_code{service="app"}'] == 4
    assert f"{MARK}rotated" not in (metrics_dir / "secrets-agent-app.prom").read_text()

    assert stack.run("clean", "app")[0] == 0
    assert not (metrics_dir / "secrets-agent-app.prom").exists()
    assert "secrets_agent_last_render_success" not in str(_scrape(node_exporter))


def stack_main_refresh(stack: Stack, systemd: FakeSystemd) -> int:
    """`secrets-agent refresh app` with a fake systemd in which app.service runs."""
    return stack.run("refresh", "app", systemd=systemd)[0]


def test_a_symlinked_metrics_file_is_refused_and_nothing_follows_it(
    stack: Stack,
    metrics_dir: Path,
    tmp_path: Path,
) -> None:
    """A symlink planted at the .prom path is not followed: the render still succeeds, the journal
    says the metrics were not written, and the link's target is untouched."""
    _template(stack, _values(1))
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    (metrics_dir / "secrets-agent-app.prom").symlink_to(target)
    code, _out, err = stack.run("render", "app")
    assert code == 0, err
    assert "metrics_not_written" in err
    assert target.read_text() == "keep\n"
    shutil.rmtree(metrics_dir)
