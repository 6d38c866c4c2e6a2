"""The unit files as systemd judges them: `systemd-analyze verify` and `security`.

Most run on the host's systemd (252) offline, in a temporary root that holds the units, the host's
own systemd units and stand-ins for the commands the units run; the last ones ask the systemd of
each release's machine (252 and 257) about the unit the .deb installed there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from nspawn import Machine

from agent.config import DEFAULT_THROTTLE_DEADLINE_SECONDS
from agent.host.units import render_dropin
from tests.prerequisites import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
EXAMPLES = UNITS / "examples"
HOST_SYSTEM_UNITS = Path("/usr/lib/systemd/system")
# "OK" starts below 2.0 in systemd-analyze's scale; the agent unit must stay there.
MAX_EXPOSURE = 2.0
COMMAND_STANDINS = ("usr/bin/secrets-agent", "bin/sh", "bin/sleep")
ANALYZE_TIMEOUT_SECONDS = 60
REFRESH_UNITS = ("secrets-agent-refresh@.service", "secrets-agent-refresh@.timer")
CLEAN_UNIT = "secrets-agent-clean@.service"


def _require_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None or not HOST_SYSTEM_UNITS.is_dir():
        skip_or_fail("systemd-analyze and /usr/lib/systemd/system (Debian package systemd)")


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root with systemd's own units, ours and the example app installed, and the commands they run."""
    _require_systemd_analyze()
    shutil.copytree(HOST_SYSTEM_UNITS, tmp_path / "usr/lib/systemd/system", symlinks=True)
    etc_units = tmp_path / "etc/systemd/system"
    etc_units.mkdir(parents=True)
    shutil.copy(UNITS / "secrets-agent@.service", etc_units)
    for unit in (*REFRESH_UNITS, CLEAN_UNIT):
        shutil.copy(UNITS / unit, etc_units)
    shutil.copy(EXAMPLES / "app.service", etc_units)
    shutil.copytree(EXAMPLES / "app.service.d", etc_units / "app.service.d")
    # verify checks that every ExecStart= program exists and is executable under the root.
    for command in COMMAND_STANDINS:
        path = tmp_path / command
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return tmp_path


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


@pytest.mark.parametrize(
    "unit",
    [
        "secrets-agent@app.service",
        "app.service",
        "secrets-agent-refresh@app.service",
        "secrets-agent-refresh@app.timer",
        "secrets-agent-clean@app.service",
    ],
)
def test_systemd_analyze_verify_passes_without_a_warning(unit_root: Path, unit: str) -> None:
    """`systemd-analyze verify` accepts the agent unit and the example app with its drop-in, silently."""
    result = _analyze("verify", "--man=no", f"--root={unit_root}", unit)

    # verify exits 0 even after "Unknown key" warnings; any output at all is a defect.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_report_a_broken_unit(unit_root: Path) -> None:
    """The verify set-up sees drop-ins and complains about a bad line, so a silent pass means something."""
    dropin = unit_root / "etc/systemd/system/app.service.d/secrets-agent.conf"
    dropin.write_text(dropin.read_text() + "EnvironmentFle=/run/typo\n")

    result = _analyze("verify", "--man=no", f"--root={unit_root}", "app.service")

    assert "EnvironmentFle" in result.stderr


AGENT_UNIT_INSTANCES = (
    "secrets-agent@app.service",
    "secrets-agent-refresh@app.service",
    "secrets-agent-clean@app.service",
)


@pytest.mark.parametrize("unit", AGENT_UNIT_INSTANCES)
def test_agent_units_score_ok_in_systemd_analyze_security(unit_root: Path, unit: str) -> None:
    """`systemd-analyze security --offline=true` rates an instance of the agent unit, of the
    rotation check and of the clean-up below 2.0 ("OK")."""
    # An instance, not the template: the analysis needs %i resolved, as on a real system.
    result = _analyze("security", "--offline=true", f"--root={unit_root}", unit)

    # With --offline a unit it cannot find still exits 0: read the verdict line itself.
    exposure, verdict = _exposure(result.stdout + result.stderr, unit)
    assert exposure < MAX_EXPOSURE
    assert verdict in ("SAFE", "OK")  # the clean-up, without the network, rates "SAFE"


def _exposure(output: str, unit: str) -> tuple[float, str]:
    """The overall exposure and its verdict from `systemd-analyze security UNIT`'s output."""
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+) (\w+)", output)
    assert found is not None, output
    return float(found.group(1)), found.group(2)


@pytest.mark.system
def test_installed_agent_unit_scores_ok_under_the_machines_systemd(machine: Machine) -> None:
    """`systemd-analyze security` of each release's own systemd rates an instance of the unit the
    .deb installed below 2.0 ("OK")."""
    unit = "secrets-agent@app.service"
    result = machine.run("systemd-analyze", "security", "--no-pager", unit, check=False)

    exposure, verdict = _exposure(result.stdout.decode() + result.stderr.decode(), unit)
    assert exposure < MAX_EXPOSURE
    assert verdict == "OK"


@pytest.mark.system
def test_installed_agent_unit_passes_the_machines_systemd_analyze_verify(machine: Machine) -> None:
    """`systemd-analyze verify` of each release's systemd accepts the installed agent unit, silently."""
    result = machine.run("systemd-analyze", "verify", "--man=no", "secrets-agent@app.service", check=False)

    assert (result.returncode, result.stdout + result.stderr) == (0, b"")


def test_example_dropin_is_what_enable_writes() -> None:
    """systemd/examples/app.service.d/secrets-agent.conf is exactly `secrets-agent enable app`'s drop-in."""
    assert (EXAMPLES / "app.service.d/secrets-agent.conf").read_text() == render_dropin("app")


def test_agent_unit_has_the_promised_settings() -> None:
    """The agent unit is a oneshot that stays active, owns a 0700 runtime folder and a 0700 folder for
    the record of its render (root's, whatever owner= says), and is part of the app."""
    lines = set((UNITS / "secrets-agent@.service").read_text().splitlines())
    for setting in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        # The rendered set's folder and root's own one for every record root reads (the render
        # record, the kept set and the stale mark: on_outage), both kept across the unit's restart
        # only, and the sealed copies' folder.
        "RuntimeDirectory=secrets-agent/%i secrets-agent-state/%i",
        "RuntimeDirectoryMode=0700",
        "RuntimeDirectoryPreserve=restart",
        "StateDirectory=secrets-agent",
        "StateDirectoryMode=0700",
        "PartOf=%i.service",
        "Wants=network-online.target",
        "After=network-online.target",
        "ExecStart=/usr/bin/secrets-agent render %i",
    ):
        assert setting in lines, setting
    timeout = next(line for line in lines if line.startswith("TimeoutStartSec="))
    # A little above the agent's own throttled budget, so the agent reports a timeout, not systemd.
    seconds = int(timeout.partition("=")[2])
    assert DEFAULT_THROTTLE_DEADLINE_SECONDS < seconds <= 1.2 * DEFAULT_THROTTLE_DEADLINE_SECONDS
    assert "NotifyAccess=main" in lines


def test_units_may_write_the_metrics_and_inventory_folders_and_clean_on_stop() -> None:
    """The three units may write node_exporter's Debian textfile folder (and nothing more of /var: the
    SSM Agent's inventory folder comes from secrets-agent-generator's drop-in, never the SSM Agent's
    whole folder); the check keeps its record beside the render record, in the agent unit's
    root-owned folder that outlives the app's restart (RuntimeDirectoryPreserve=restart), with no
    runtime folder of its own."""
    agent, check, clean = (
        set((UNITS / unit).read_text().splitlines())
        for unit in ("secrets-agent@.service", "secrets-agent-refresh@.service", CLEAN_UNIT)
    )
    published = "ReadWritePaths=-/var/lib/prometheus/node-exporter"
    for lines in (agent, check, clean):
        assert published in lines
    assert "RuntimeDirectoryPreserve=restart" in agent
    assert not [line for line in check if line.startswith("RuntimeDirectory")]
    writable = [line for line in agent | check | clean if line.startswith("ReadWritePaths=")]
    # A check that renders writes the set and its record, and one that heals a stale set the kept
    # set, the stale mark (beside the record) and the sealed copy.
    own = "ReadWritePaths=-/run/secrets-agent/%i -/run/secrets-agent-state/%i -/var/lib/secrets-agent"
    assert sorted(writable) == sorted([published, own])


def test_nothing_runs_in_front_of_the_secrets_removal_on_stop() -> None:
    """The agent unit runs no command on stop (systemd itself deletes the runtime folder, the
    secrets with it, the moment the app has stopped); the metrics and inventory clean-up runs
    afterwards in secrets-agent-clean@NAME, only once that folder is gone, and before a queued
    start of the agent."""
    agent = (UNITS / "secrets-agent@.service").read_text().splitlines()
    assert [line for line in agent if line.startswith(("ExecStop", "ExecReload"))] == []
    assert "OnSuccess=secrets-agent-clean@%i.service" in agent
    assert "OnSuccessJobMode=fail" in agent
    clean = set((UNITS / CLEAN_UNIT).read_text().splitlines())
    for setting in (
        "Type=oneshot",
        "ExecStart=/usr/bin/secrets-agent clean %i",
        "ExecCondition=/bin/sh -c 'n=0; while [ -e /run/secrets-agent/%i ]; do "
        '[ -z "$$(systemctl list-jobs --no-legend secrets-agent@%i.service)" ] || exit 1; '
        "n=$$((n+1)); [ $$n -le 20 ] || exit 1; sleep 0.05; done'",
        "Before=secrets-agent@%i.service",
        "PrivateNetwork=yes",
    ):
        assert setting in clean, setting
    assert not any(line.startswith(("[Install]", "RuntimeDirectory=")) for line in clean)


def test_refresh_units_have_the_promised_settings() -> None:
    """The check is a oneshot running `refresh %i`, writing only NAME's folders; the timer runs it every
    15 minutes after a fixed random delay and is enabled through timers.target."""
    service = set((UNITS / "secrets-agent-refresh@.service").read_text().splitlines())
    for setting in (
        "Type=oneshot",
        "ExecStart=/usr/bin/secrets-agent refresh %i",
        "ReadWritePaths=-/run/secrets-agent/%i -/run/secrets-agent-state/%i -/var/lib/secrets-agent",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ):
        assert setting in service, setting
    timer = set((UNITS / "secrets-agent-refresh@.timer").read_text().splitlines())
    for setting in (
        "OnActiveSec=15min",
        "OnUnitActiveSec=15min",
        "RandomizedDelaySec=5min",
        "FixedRandomDelay=yes",
        "WantedBy=timers.target",
    ):
        assert setting in timer, setting


def test_the_stale_timer_runs_the_check_every_minute_with_jitter_and_goes_with_the_agent() -> None:
    """secrets-agent-stale@.timer starts the rotation check every minute with a fresh random delay
    each time, stops with the agent unit, and is never enabled on its own (no [Install])."""
    text = (UNITS / "secrets-agent-stale@.timer").read_text()
    lines = set(text.splitlines())
    for setting in (
        "Unit=secrets-agent-refresh@%i.service",
        "OnActiveSec=1min",
        "OnUnitActiveSec=1min",
        "RandomizedDelaySec=20s",
        "PartOf=secrets-agent@%i.service",
    ):
        assert setting in lines, setting
    assert "FixedRandomDelay=yes" not in lines
    assert "[Install]" not in lines
