"""Only root decides what is fetched, under a real systemd 252 and 257 (Debian 12 and 13): a
template someone else could change keeps the app from starting, and the journal says how to fix it.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from nspawn import Machine
from system_helpers import MARK, App, put

from devtools.fakeimds import FakeImds

pytestmark = pytest.mark.system

NewApp = Callable[..., App]


def test_group_writable_template_after_enable_keeps_the_app_down(
    machine: Machine, new_app: NewApp, ssm: Any, imds: FakeImds
) -> None:
    """`enable` writes a root-owned 0640 starter and says so; made group-writable afterwards, the
    template fails the agent unit with exit 2 before any fetch, the app does not start, the journal
    names the file and the chmod that fixes it, doctor fails its ownership line, and the fix works."""
    app = new_app("trusty", behind_agent=False)
    put(ssm, f"{app.prefix}/TOKEN", f"trusty {MARK}")
    path = f"/etc/secrets-agent/{app.name}.env.j2"

    enabled = machine.text("secrets-agent", "enable", app.name)
    assert f"created {path} (owner root, mode 0640: only root may change what is fetched)" in enabled
    app.write_template(f'TOKEN={{{{ param("{app.prefix}/TOKEN") }}}}\n')
    machine.systemctl("start", app.unit)
    assert app.environ()[b"TOKEN"] == f"trusty {MARK}".encode()

    machine.run("chmod", "g+w", path)
    cursor = machine.journal_cursor()
    imds_requests = len(imds.requests)
    restarted = machine.systemctl("restart", app.unit, check=False)

    assert restarted.returncode != 0
    assert machine.show(app.agent_unit, "ActiveState") == "failed"
    assert machine.show(app.agent_unit, "ExecMainStatus") == "2"
    assert machine.show(app.unit, "ActiveState") != "active"
    assert not app.exists(app.folder)
    journal = machine.journal(after=cursor, unit=app.agent_unit)
    assert f"refusing to read {path}: it is owned by root with mode 0660" in journal
    assert f"fix: `chmod g-w {path}`" in journal
    assert len(imds.requests) == imds_requests  # no credentials taken, so nothing fetched

    doctor = machine.run("secrets-agent", "doctor", app.name, check=False)
    assert doctor.returncode == 2  # the failed ownership check's own code, as render's above
    assert f"failed  ownership: refusing to read {path}" in doctor.stdout.decode()

    machine.run("chmod", "g-w", path)
    machine.systemctl("reset-failed", app.agent_unit)
    machine.systemctl("start", app.unit)
    assert app.environ()[b"TOKEN"] == f"trusty {MARK}".encode()
