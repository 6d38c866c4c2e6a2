"""What operators see, under a real systemd: `secrets-agent status`, the metrics file the units write
(served by Debian's real node_exporter, started on the host's 127.0.0.1 and pointed at the machine's
textfile folder) and the SSM Inventory file `Custom:SecretsAgent`."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.request
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

from agent.observe.inventory import INVENTORY_FILE_NAME, TYPE_NAME, validate_inventory
from tests.node_exporter import serving

pytestmark = pytest.mark.system

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
SSM_DIR = "/var/lib/amazon/ssm"
INSTANCE_ID = "i-0123456789abcdef0"
INVENTORY_DIR = f"{SSM_DIR}/{INSTANCE_ID}/inventory/custom"
# The three units that publish inventory, each with a probe instance (see _probe_writes).
PUBLISHING_UNITS = ("secrets-agent", "secrets-agent-refresh", "secrets-agent-clean")
PROBE = "inventoryprobe"
GENERATOR_DROPIN = "secrets-agent-ssm-inventory.conf"
JOURNAL_WAIT_SECONDS = 10


@pytest.fixture
def observed_machine(machine: Machine) -> Iterator[Machine]:
    """The machine with metrics_dir set to Debian's textfile folder and an SSM agent's custom
    inventory folder, both as their packages make them (root, 0755), and systemd reloaded since, as
    at the next boot (its generator grants the units that folder); all gone afterwards."""
    for folder in (TEXTFILE_DIR, INVENTORY_DIR):
        machine.run("install", "-d", "-m", "0755", folder)
    settings = machine.path("/etc/secrets-agent/agent.toml")
    settings.write_text(f'metrics_dir = "{TEXTFILE_DIR}"\n')
    machine.daemon_reload()
    yield machine
    settings.unlink()
    machine.run("rm", "-rf", "/var/lib/prometheus", "/var/lib/amazon")
    machine.daemon_reload()


@pytest.fixture
def node_exporter(observed_machine: Machine) -> Iterator[Callable[[], str]]:
    """Debian's node_exporter (tests/node_exporter.py) on the host, reading the machine's textfile
    folder; yields a function that scrapes it."""
    with serving(observed_machine.path(TEXTFILE_DIR)) as url:

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())

        yield scrape


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
    machine.systemctl("start", app.refresh_unit)
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


def _probe_writes(machine: Machine, targets: list[str]) -> dict[str, set[str]]:
    """Start a probe instance of each of the three units that publish inventory, its ExecStart=
    replaced (a drop-in, the unit's sandbox kept) by a shell that tries to create each of
    `targets`, a path per unit and target (TARGET.UNIT); which of them each unit created. Every probe
    exits 3 so that no clean-up (OnSuccess=) follows."""
    units = [f"{unit}@{PROBE}.service" for unit in PUBLISHING_UNITS]
    dropins = [machine.path(f"/etc/systemd/system/{unit}.d/probe.conf") for unit in units]
    try:
        for unit, dropin in zip(PUBLISHING_UNITS, dropins):
            paths = " ".join(f"{target}.{unit}" for target in targets)
            dropin.parent.mkdir(exist_ok=True)
            dropin.write_text(
                "[Service]\nExecStart=\n"
                f"ExecStart=/bin/sh -c 'for p; do true >\"$$p\" || :; done; exit 3' probe {paths}\n"
            )
        machine.daemon_reload()
        for unit in units:
            assert machine.systemctl("start", unit, check=False).returncode != 0
            assert machine.show(unit, "ExecMainStatus") == "3", machine.journal(unit=unit)
        return {
            unit: {target for target in targets if machine.path(f"{target}.{unit}").exists()}
            for unit in PUBLISHING_UNITS
        }
    finally:
        for dropin in dropins:
            dropin.unlink(missing_ok=True)
        machine.systemctl("reset-failed", *units, check=False)
        machine.daemon_reload()
        machine.run("sh", "-c", f"rm -f {' '.join(f'{target}.*' for target in targets)}")


def test_the_units_may_write_the_inventory_folder_and_nothing_else_of_the_ssm_agents(
    observed_machine: Machine,
) -> None:
    """Under each unit's own sandbox (secrets-agent@, -refresh@ and -clean@), the SSM Agent's custom
    inventory folder is writable (systemd's daemon-reload ran the package's generator, whose drop-in
    names it) and nothing else of /var/lib/amazon/ssm is: not the instance's inventory or state
    folders, nor the SSM Agent's top folder."""
    machine = observed_machine
    writable = f"{INVENTORY_DIR}/probe"
    closed = [
        f"{SSM_DIR}/{INSTANCE_ID}/inventory/probe",
        f"{SSM_DIR}/{INSTANCE_ID}/probe",
        f"{SSM_DIR}/probe",
    ]
    created = _probe_writes(machine, [writable, *closed])
    assert created == {unit: {writable} for unit in PUBLISHING_UNITS}
    generated = machine.text("cat", f"/run/systemd/generator/secrets-agent@.service.d/{GENERATOR_DROPIN}")
    assert f"ReadWritePaths=-{INVENTORY_DIR}\n" in generated
    for unit in PUBLISHING_UNITS:
        granted = machine.show(f"{unit}@{PROBE}.service", "ReadWritePaths").split()
        assert f"-{INVENTORY_DIR}" in granted
        assert not [path for path in granted if SSM_DIR.startswith(path.lstrip("-"))]


def test_a_folder_not_named_like_an_instance_id_is_not_granted(observed_machine: Machine) -> None:
    """Folders in /var/lib/amazon/ssm whose names are not an instance id (capitals, a suffix, a
    space and a second path) get no line in the generator's drop-in and stay read-only to the units;
    an mi-... folder (a hybrid managed node) is granted like an i-... one."""
    machine = observed_machine
    bad = ["i-0123456789ABCDEF0", "i-0123456789abcdef0.bak", "i-0123456789abcdef0 -%etc"]
    hybrid = "mi-0123456789abcdef0"
    for name in [*bad, hybrid]:
        machine.run("install", "-d", "-m", "0755", f"{SSM_DIR}/{name}/inventory/custom")
    machine.daemon_reload()
    generated = machine.text("cat", f"/run/systemd/generator/secrets-agent@.service.d/{GENERATOR_DROPIN}")
    granted = [line for line in generated.splitlines() if line.startswith("ReadWritePaths=")]
    assert sorted(granted) == sorted(
        f"ReadWritePaths=-{SSM_DIR}/{name}/inventory/custom" for name in (INSTANCE_ID, hybrid)
    )
    targets = [f"{SSM_DIR}/{name}/inventory/custom/probe" for name in ("i-0123456789ABCDEF0", hybrid)]
    created = _probe_writes(machine, targets)
    assert created == {unit: {targets[1]} for unit in PUBLISHING_UNITS}


def _journal_with(machine: Machine, cursor: str, unit: str, text: str) -> str:
    """`unit`'s journal after `cursor`, once it holds `text` (journald may file a line a moment
    after the unit's process ended), or as it is after JOURNAL_WAIT_SECONDS."""
    deadline = time.monotonic() + JOURNAL_WAIT_SECONDS
    journal = machine.journal(after=cursor, unit=unit)
    while text not in journal and time.monotonic() < deadline:
        time.sleep(0.1)
        journal = machine.journal(after=cursor, unit=unit)
    return journal


def test_a_folder_made_after_systemd_loaded_the_units_is_a_warning_until_daemon_reload(
    observed_machine: Machine, new_app: Callable[..., App], ssm: Any
) -> None:
    """An SSM Agent folder made after the generator ran (a Xen instance's SSM Agent registering late):
    the render succeeds, writes the inventory it may, and warns that this folder is read-only,
    saying to run `systemctl daemon-reload`; after one, the next render writes it there too."""
    machine = observed_machine
    app = new_app("inventorylate")  # (a daemon-reload)
    put(ssm, f"{app.prefix}/TOKEN", f"token {MARK}")
    app.write_template(f'TOKEN={{{{ param("{app.prefix}/TOKEN") }}}}\n')
    late = f"{SSM_DIR}/i-0fedcba9876543210/inventory/custom"
    machine.run("install", "-d", "-m", "0755", late)
    cursor = machine.journal_cursor()
    machine.systemctl("start", app.unit)
    journal = _journal_with(machine, cursor, app.agent_unit, "inventory_not_written")
    (warning,) = [json.loads(line) for line in journal.splitlines() if "inventory_not_written" in line]
    assert warning["path"] == f"{late}/{INVENTORY_FILE_NAME}"
    assert "read-only" in warning["error"]
    assert "run `systemctl daemon-reload`" in warning["error"]
    assert machine.path(f"{INVENTORY_DIR}/{INVENTORY_FILE_NAME}").exists()
    assert not machine.path(f"{late}/{INVENTORY_FILE_NAME}").exists()

    machine.daemon_reload()
    cursor = machine.journal_cursor()
    machine.systemctl("restart", app.unit)
    document = json.loads(machine.path(f"{late}/{INVENTORY_FILE_NAME}").read_text())
    assert {row["Service"] for row in document["Content"]} >= {app.name}
    assert "inventory_not_written" not in machine.journal(after=cursor, unit=app.agent_unit)
    assert MARK not in journal
