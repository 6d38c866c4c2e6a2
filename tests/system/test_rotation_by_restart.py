"""Rotation by restart, the README's promise: after a change in SSM, `systemctl restart app` gives
the app the current value, every time, under systemd 252 and 257."""

from __future__ import annotations

import secrets
from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

from tests.hard_values import template_lines

pytestmark = pytest.mark.system

CYCLES = 20
# Back to back: the machine's start limit is raised (nspawn.raise_start_limit), so 21 starts of
# the app and of its agent unit in a few seconds are not refused.


def test_twenty_restarts_give_the_app_the_current_value_every_time(
    machine: Machine, new_app: Callable[..., App], ssm: Any
) -> None:
    """20 cycles of "new value in SSM, systemctl restart app, read the app's environ" read the
    value just written 20 times out of 20, each from a new app process and a new agent run."""
    app = new_app("rotation")
    name = f"{app.prefix}/TOKEN"
    put(ssm, name, f"first {MARK}")
    app.write_template(template_lines(app.prefix, ["TOKEN"]))
    machine.systemctl("start", app.unit)
    assert app.environ()[b"TOKEN"] == f"first {MARK}".encode()
    pids = {app.main_pid()}
    runs = {machine.show(app.agent_unit, "InvocationID")}
    # The clean-up of metrics and inventory runs after a stop, never for a restart (which keeps the
    # runtime folder and writes both again): its command's start time does not move.
    cleaned = machine.show(app.clean_unit, "ExecMainStartTimestampMonotonic")

    stale = []
    for cycle in range(1, CYCLES + 1):
        value = f"cycle {cycle} {MARK} {secrets.token_hex(8)}"
        put(ssm, name, value)
        machine.systemctl("restart", app.unit)
        seen = app.environ().get(b"TOKEN")
        if seen != value.encode():
            stale.append((cycle, seen))
        pids.add(app.main_pid())
        runs.add(machine.show(app.agent_unit, "InvocationID"))

    assert stale == []
    assert len(pids) == CYCLES + 1
    assert len(runs) == CYCLES + 1
    assert machine.show(app.unit, "ActiveState") == "active"
    assert machine.show(app.clean_unit, "ExecMainStartTimestampMonotonic") == cleaned
