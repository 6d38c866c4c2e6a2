"""What operators see, under a real systemd: `secrets-agent status`, the metrics file the units write
(served by Debian's real node_exporter, started on the host's 127.0.0.1 and pointed at the machine's
textfile folder) and the SSM Inventory file `Custom:SecretsAgent`."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

from agent.observe.inventory import INVENTORY_FILE_NAME, TYPE_NAME, validate_inventory
from tests.prerequisites import require_command

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
NODE_EXPORTER = Path("/usr/bin/prometheus-node-exporter")
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
INVENTORY_DIR = "/var/lib/amazon/ssm/i-0123456789abcdef0/inventory/custom"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def observed_machine(machine: Machine) -> Iterator[Machine]:
    """The machine with metrics_dir set to Debian's textfile folder and an SSM agent's custom
    inventory folder, both as their packages make them (root, 0755); all gone afterwards."""
    for folder in (TEXTFILE_DIR, INVENTORY_DIR):
        machine.run("install", "-d", "-m", "0755", folder)
    settings = machine.path("/etc/secrets-agent/agent.toml")
    settings.write_text(f'metrics_dir = "{TEXTFILE_DIR}"\n')
    yield machine
    settings.unlink()
    machine.run("rm", "-rf", "/var/lib/prometheus", "/var/lib/amazon")


@pytest.fixture(scope="session")
def node_exporter_binary() -> Path:
    """Debian's prometheus-node-exporter on the host, installed through packaging/apt-install.sh."""
    return Path(require_command(NODE_EXPORTER.name, "prometheus-node-exporter"))


@pytest.fixture
def node_exporter(observed_machine: Machine, node_exporter_binary: Path) -> Iterator[Callable[[], str]]:
    """node_exporter on 127.0.0.1 (a free port), only its textfile collector, reading the machine's
    textfile folder; yields a function that scrapes it."""
    port = _free_port()
    process = subprocess.Popen(
        [
            str(node_exporter_binary),
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={observed_machine.path(TEXTFILE_DIR)}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                scrape()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield scrape
    finally:
        process.terminate()
        process.wait(timeout=10)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value node_exporter serves for NAME with (at least) LABELS, whatever their order."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        series, _, spelled = head.partition("{")
        if series == name and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', spelled)).items():
            return float(value)
    raise AssertionError(f"{name} {labels} is not served:\n{text}")


def _status(machine: Machine, *args: str) -> tuple[int, str]:
    result = machine.run("secrets-agent", "status", *args, check=False)
    return result.returncode, (result.stdout + result.stderr).decode()


def test_status_metrics_and_inventory_follow_the_app(
    observed_machine: Machine,
    new_app: Callable[..., App],
    ssm: Any,
    node_exporter: Callable[[], str],
) -> None:
    """After the app starts, `status` shows the versions just rendered (exit 0, JSON that parses),
    node_exporter serves them with node_textfile_scrape_error 0 and the inventory file lists them;
    a refresh that restarts the app for a rotation moves the served version and change counter;
    stopping the app removes the metrics file and its inventory lines. No value anywhere."""
    machine = observed_machine
    app = new_app("observed")
    values = {key: f"{key} value {MARK}" for key in ("DB", "KEY")}
    for key, value in values.items():
        put(ssm, f"{app.prefix}/{key}", value)
    put(ssm, f"{app.prefix}/KEY", values["KEY"])  # version 2
    app.write_template("".join(f'{k}={{{{ param("{app.prefix}/{k}") }}}}\n' for k in values))
    machine.systemctl("start", app.unit)

    code, table = _status(machine, app.name)
    assert code == 0, table
    assert f"{app.name}: healthy" in table
    assert re.search(rf"{app.prefix}/DB +version 1\n", table), table
    assert re.search(rf"{app.prefix}/KEY +version 2\n", table), table
    assert f"{app.agent_unit} active (exited)" in table
    code, as_json = _status(machine, app.name, "--json")
    assert code == 0
    (service,) = json.loads(as_json)["services"]
    assert {p["name"]: p["version"] for p in service["parameters"]} == {
        f"{app.prefix}/DB": 1,
        f"{app.prefix}/KEY": 2,
    }
    assert service["refresh"]["timer"] == "off"

    prom = machine.path(f"{TEXTFILE_DIR}/secrets-agent-{app.name}.prom")
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    served = node_exporter()
    assert _sample(served, "node_textfile_scrape_error") == 0
    db_version = {"service": app.name, "parameter": f"{app.prefix}/DB"}
    assert _sample(served, "secrets_agent_parameter_version", **db_version) == 1
    assert _sample(served, "secrets_agent_last_render_success", service=app.name) == 1

    inventory = machine.path(f"{INVENTORY_DIR}/{INVENTORY_FILE_NAME}")
    document = json.loads(inventory.read_text())
    assert validate_inventory(document) == []
    assert document["TypeName"] == TYPE_NAME
    rows = [row for row in document["Content"] if row["Service"] == app.name]
    assert {row["Parameter"]: row["Version"] for row in rows} == {
        f"{app.prefix}/DB": "1",
        f"{app.prefix}/KEY": "2",
    }

    # A rotation, picked up by the check unit: the app restarts with version 2 (on_change = restart).
    put(ssm, f"{app.prefix}/DB", f"rotated {MARK}")
    machine.systemctl("start", f"secrets-agent-refresh@{app.name}.service")
    served = node_exporter()
    assert _sample(served, "secrets_agent_parameter_version", **db_version) == 2
    assert _sample(served, "secrets_agent_refresh_changes_total", service=app.name) == 1
    assert _sample(served, "secrets_agent_last_refresh_changes", service=app.name) == 1
    code, table = _status(machine, app.name)
    assert code == 0, table
    assert re.search(rf"{app.prefix}/DB +version 2\n", table), table
    assert "1 changed" in table
    seen = table + as_json + served + prom.read_text() + inventory.read_text()

    app.stop()
    assert not prom.exists(), machine.journal(unit=app.agent_unit)
    assert app.name not in {row["Service"] for row in json.loads(inventory.read_text())["Content"]}
    assert MARK not in seen
    for value in values.values():
        assert value not in seen


def test_status_says_why_a_render_failed_and_exits_with_its_code(
    observed_machine: Machine, new_app: Callable[..., App], ssm: Any, node_exporter: Callable[[], str]
) -> None:
    """A parameter deleted from SSM: the app does not start, `status` exits 4 (the render's own code,
    never 1) naming the unit, the exit code and the missing parameter; --json parses and says
    unhealthy; the served metrics say the last render failed; no value in any of it."""
    machine = observed_machine
    app = new_app("observedfail")
    put(ssm, f"{app.prefix}/GONE", f"gone {MARK}")
    app.write_template(f'GONE={{{{ param("{app.prefix}/GONE") }}}}\n')
    ssm.delete_parameter(Name=f"{app.prefix}/GONE")
    assert machine.systemctl("start", app.unit, check=False).returncode != 0

    code, table = _status(machine, app.name)
    assert code == 4, table
    assert f"{app.name}: UNHEALTHY" in table
    assert f"{app.agent_unit} failed (exit 4)" in table
    assert f"{app.prefix}/GONE" in table
    code, as_json = _status(machine, app.name, "--json")
    assert code == 4
    document = json.loads(as_json)
    assert document["healthy"] is False
    assert document["services"][0]["last_render"]["exit_code"] == 4
    served = node_exporter()
    assert _sample(served, "secrets_agent_last_render_success", service=app.name) == 0
    assert _sample(served, "node_textfile_scrape_error") == 0
    assert MARK not in table + as_json + served
    assert os.path.exists(machine.path(f"{TEXTFILE_DIR}/secrets-agent-{app.name}.prom"))
