"""Shell completion as an operator gets it: Debian's bash-completion loads the project's script from a
completions folder on demand (as the packages install it) and completes commands, options and the
service names of the config folder; zsh reads its script without a syntax error."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools import docs
from tests.prerequisites import require_command, skip_or_fail

REPO = Path(__file__).resolve().parents[2]
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
# What TAB runs: bash-completion's loader finds `secrets-agent` in BASH_COMPLETION_USER_DIR/completions
# (the packages put it in /usr/share/bash-completion/completions), then its function fills COMPREPLY.
COMPLETE = r"""
source /usr/share/bash-completion/bash_completion
__load_completion secrets-agent || { echo "no completion loaded" >&2; exit 3; }
spec=$(complete -p secrets-agent) || exit 4
function=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
read -r -a COMP_WORDS <<<"$LINE"
[[ $LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE=$LINE
COMP_POINT=${#LINE}
"$function" secrets-agent "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def completions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completions folder laid out as the packages install it, and Debian's bash-completion."""
    if not BASH_COMPLETION.exists() and os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "packaging/apt-install.sh"), "bash-completion"], check=False)
    if not BASH_COMPLETION.exists():
        skip_or_fail(f"{BASH_COMPLETION} (Debian package bash-completion; `make test` installs it as root)")
    user_dir = tmp_path_factory.mktemp("bash-completion")
    (user_dir / "completions").mkdir()
    shutil.copyfile(docs.BASH_COMPLETION, user_dir / "completions" / "secrets-agent")
    return user_dir


def complete(line: str, user_dir: Path, config_dir: Path = Path("/nonexistent")) -> list[str]:
    """What bash offers at the end of `line` (TAB after its last word)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(user_dir),
        "BASH_COMPLETION_USER_DIR": str(user_dir),
        "SECRETS_AGENT_CONFIG_DIR": str(config_dir),
        "LINE": line,
    }
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", COMPLETE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(filter(None, done.stdout.splitlines()))


def test_en_tab_completes_to_enable(completions_dir: Path) -> None:
    """`secrets-agent en<TAB>` offers `enable` only."""
    assert complete("secrets-agent en", completions_dir) == ["enable"]


def test_every_command_is_offered_after_the_command_name(completions_dir: Path) -> None:
    """`secrets-agent <TAB>` offers every command of the real argument parser, validate included."""
    assert complete("secrets-agent ", completions_dir) == sorted(docs.subcommands())


def test_a_service_name_completes_from_the_config_folder(completions_dir: Path, tmp_path: Path) -> None:
    """`secrets-agent render w<TAB>` offers the services whose templates are in the config folder,
    from SECRETS_AGENT_CONFIG_DIR or a --config-dir on the line."""
    for name in ("app", "worker", "web"):
        (tmp_path / f"{name}.env.j2").write_text("", encoding="utf-8")
    (tmp_path / "wrong.toml").write_text("", encoding="utf-8")
    assert complete("secrets-agent render w", completions_dir, tmp_path) == ["web", "worker"]
    line = f"secrets-agent --config-dir {tmp_path} doctor "
    assert complete(line, completions_dir) == ["app", "web", "worker"]


def test_options_complete_per_command(completions_dir: Path) -> None:
    """`secrets-agent enable app --<TAB>` offers enable's options, not policy's."""
    offered = complete("secrets-agent enable app --", completions_dir)
    assert "--credentials" in offered
    assert "--refresh" in offered
    assert "--account" not in offered


def test_zsh_reads_its_completion_script() -> None:
    """zsh parses _secrets-agent without a syntax error."""
    zsh = require_command("zsh", "zsh")
    done = subprocess.run([zsh, "-n", str(docs.ZSH_COMPLETION)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
