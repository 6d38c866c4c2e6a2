"""The README's quick start: one install block per package kind, each on the agent's version, and
the app block with the journal line it shows; the container tests run these very blocks."""

from __future__ import annotations

import pytest

from agent import __version__
from tests import readme_quickstart


@pytest.mark.parametrize("kind", sorted(readme_quickstart.INSTALL_LABELS))
def test_each_install_block_names_the_agents_version(kind: str) -> None:
    """Each install block opens with VERSION= set to agent/__init__.py's version and uses it."""
    block = readme_quickstart.install_block(kind)
    assert block.splitlines()[0] == f"VERSION={__version__}"
    assert "$VERSION" in block or "${VERSION}" in block


def test_app_block_goes_from_enable_to_the_rendered_line() -> None:
    """The app block enables, writes the template, prints the policy, runs doctor, restarts the app
    and greps the agent's journal for the `rendered` event the README then shows."""
    commands = [line.split("#")[0].strip() for line in readme_quickstart.app_block().splitlines()]
    assert commands[0] == "sudo secrets-agent enable app"
    assert "sudo secrets-agent doctor app" in commands
    assert commands[-1].startswith("journalctl -u secrets-agent@app")
    shown = readme_quickstart.rendered_line()
    assert shown["event"] == "rendered"
    assert shown["path"] == "/run/secrets-agent/app/env"


def test_root_script_drops_sudo_only_at_a_command_start() -> None:
    """`sudo ` goes at the start of a line and after a pipe, nowhere else; errors stop the script."""
    script = readme_quickstart.as_root_script("sudo a\necho x | sudo tee f\necho 'sudo stays'\n")
    assert script == "set -e\na\necho x | tee f\necho 'sudo stays'\n"
