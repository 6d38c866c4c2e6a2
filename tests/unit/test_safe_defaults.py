"""Issue 27, safe by default: what an operator leaves at its default can neither start an app without
its secrets nor hide a failure behind the wrong exit code or a leaked value.

Each test here uses only interfaces that existed before the issue, so that run against the commit
before it (910e44e) every one fails for the behaviour it names, not for a missing import.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import pytest
import structlog

from agent import render
from agent.commands.doctor import FAILED, PASSED, SKIPPED, Check, report
from agent.config import load_agent_settings, load_service_settings
from agent.errors import AccessDenied, ConfigError, ServiceUnavailable, TemplateError, UntrustedFile
from agent.host.trust import read_trusted
from agent.host.units import render_starter_template
from agent.log import REDACTOR, configure_logging
from agent.template.formats import FORMATS
from agent.template.jinja import compile_template
from agent.template.values import ParamValue

# -- 1. FIPS only when asked ----------------------------------------------------------------------


def test_fips_defaults_to_false_and_auto_stays_an_opt_in(tmp_path: Path) -> None:
    """With nothing set use_fips_endpoint is false (every AWS SDK's default); `auto` is taken only
    when asked for, while dual-stack keeps auto as its default."""
    settings = load_agent_settings({}, config_dir=str(tmp_path))
    assert settings.use_fips_endpoint.value == "false"
    assert settings.use_dualstack_endpoint.value == "auto"
    asked = load_agent_settings({"AWS_USE_FIPS_ENDPOINT": "auto"}, config_dir=str(tmp_path))
    assert asked.use_fips_endpoint.value == "auto"


# -- 2. No app starts without secrets ---------------------------------------------------------------


def _service(tmp_path: Path, template: str, settings: str = "") -> render.ServiceSettings:
    (tmp_path / "app.env.j2").write_text(template, encoding="utf-8")
    if settings:
        (tmp_path / "app.toml").write_text(settings, encoding="utf-8")
    return load_service_settings(load_agent_settings({}, config_dir=str(tmp_path)), "app")


@pytest.mark.parametrize(
    "template",
    [
        render_starter_template("app"),
        render_starter_template("app", credentials=True),
        "",
        "# nothing yet\nLOG_LEVEL=info\n",
        '{# DATABASE_URL={{ param("/app/DATABASE_URL") }} #}\n',
    ],
    ids=["starter", "starter-credentials", "empty", "constants-only", "commented-out"],
)
def test_a_template_asking_for_no_parameter_is_refused_with_exit_3(tmp_path: Path, template: str) -> None:
    """A template without param() or params() (the starter `enable` writes, a commented-out line) is
    refused before anything is fetched: exit 3, naming the file and showing the first line to write."""
    service = _service(tmp_path, template)
    with pytest.raises(TemplateError) as refused:
        render.read_template(service)
    assert refused.value.exit_code == 3
    message = refused.value.message
    assert str(tmp_path / "app.env.j2") in message
    assert 'DATABASE_URL={{ param("/app/DATABASE_URL") }}' in message


@pytest.mark.parametrize(
    "template",
    [
        'A={{ param("/app/A") }}\n',
        '{% for k, v in params("/app/").items() %}{{ k | env_name }}={{ v }}\n{% endfor %}',
        'A={{ param("/app/" ~ param("/app/which")) }}\n',
        'A={{ secret("prod/app/a") }}\n',
    ],
    ids=["param", "params", "computed", "secret"],
)
def test_a_template_asking_for_parameters_is_read(tmp_path: Path, template: str) -> None:
    """Control: a template with a param(), params() or secret() call, constant or computed, is accepted."""
    assert render.read_template(_service(tmp_path, template)) is not None


# -- 3. on_change that cannot deliver is refused ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["env", "credentials"])
@pytest.mark.parametrize("on_change", ["render", "reload"])
def test_on_change_that_systemd_would_not_deliver_is_refused(
    tmp_path: Path, fmt: str, on_change: str
) -> None:
    """render/reload with a format systemd reads only at the app's start is refused when the settings
    are read (exit 2), naming on_change, the format and what to use instead."""
    with pytest.raises(ConfigError) as refused:
        _service(tmp_path, 'A={{ param("/a") }}\n', f'format = "{fmt}"\non_change = "{on_change}"\n')
    assert refused.value.exit_code == 2
    message = refused.value.message
    assert f'on_change = "{on_change}"' in message
    assert f'format = "{fmt}"' in message
    assert 'use on_change = "restart"' in message
    assert 'format = "dotenv" or "json"' in message


@pytest.mark.parametrize("fmt", ["dotenv", "json"])
@pytest.mark.parametrize("on_change", ["render", "reload", "restart", "none"])
def test_on_change_stays_valid_where_the_app_reads_the_file_itself(
    tmp_path: Path, fmt: str, on_change: str
) -> None:
    """Control: every on_change is accepted for dotenv and json, which the app reads itself."""
    service = _service(tmp_path, 'A={{ param("/a") }}\n', f'format = "{fmt}"\non_change = "{on_change}"\n')
    assert (service.format, service.on_change) == (fmt, on_change)


def test_the_refused_pairs_are_exactly_the_formats_systemd_reads() -> None:
    """Every format either is one the app reads itself or is refused with render/reload (no third kind)."""
    assert sorted(name for name, entry in FORMATS.items() if entry.read_at_start_only) == [
        "credentials",
        "env",
    ]


# -- 5. Exit codes keep their meaning ---------------------------------------------------------------


class _DenyingResolver:
    """Serves /app/which; any other name is what SSM denies (or, with `error`, what fails there)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get(self, selector: str) -> Optional[ParamValue]:
        if selector == "/app/which":
            return ParamValue("blue", selector)
        raise self.error

    def get_path(self, path: str, recursive: bool) -> Mapping[str, ParamValue]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        AccessDenied("SSM denied ssm:GetParameters on /app/blue: grant it"),
        ServiceUnavailable("SSM did not answer before the deadline"),
    ],
    ids=["denied", "outage"],
)
def test_an_agent_error_at_render_time_keeps_its_code(error: Exception) -> None:
    """A computed name that SSM denies (or that an outage stops) while the template renders keeps its
    own exit code and message, instead of becoming exit 3 "fix the template"."""
    template = compile_template('A={{ param("/app/" ~ param("/app/which")) }}\n', "app.env.j2")
    with pytest.raises(type(error)) as raised:
        template.render(_DenyingResolver(error), carrier=FORMATS["env"])
    assert raised.value is error


def test_a_bug_in_a_filter_still_becomes_a_template_error() -> None:
    """Control: an ordinary exception while rendering is still the template's error (exit 3)."""
    template = compile_template('A={{ param("/app/" ~ param("/app/which")) }}\n', "app.env.j2")
    with pytest.raises(TemplateError):
        template.render(_DenyingResolver(ZeroDivisionError("no")), carrier=FORMATS["env"])


@pytest.mark.parametrize(
    ("failed", "code"),
    [
        (("region", "unknown: set AWS_REGION"), 2),
        (("parameter /app/x", "does not exist"), 4),
        (("ssm connection", "no connection"), 7),
        (("runtime folder", "not on tmpfs"), 8),
        (("parameter /app/y", "SSM denied it", 5), 5),
        (("drop-in", "no drop-in"), 9),
    ],
)
def test_doctor_exits_with_the_code_of_what_failed(failed: tuple[object, ...], code: int) -> None:
    """doctor exits 0 when every check passed, else with the first failure's own code, never 1."""
    lines: list[str] = []
    first = Check(FAILED, *failed)  # type: ignore[arg-type]
    checks = [
        Check(PASSED, "settings", "ok"),
        first,
        Check(SKIPPED, "clock", "-"),
        Check(FAILED, "role", "x"),
    ]
    assert report(iter(checks), lines.append) == code
    assert report(iter([Check(PASSED, "settings", "ok")]), lines.append) == 0


# -- 6. Redaction that holds ------------------------------------------------------------------------

# Quotes, a backslash, a control character and non-ASCII: each is escaped in JSON and in repr().
HARD_SECRET = "p\"a\\ss\x01wörd'-tail-of-the-secret"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_secret_is_redacted_in_every_form_a_log_line_holds(fmt: str) -> None:
    """A value with quotes, a backslash, a control character and non-ASCII never reaches the log,
    raw, JSON-escaped or as repr(), in a field or in a debug traceback."""
    out = io.StringIO()
    configure_logging(stream=out, fmt=fmt, verbose=True)
    REDACTOR.add(HARD_SECRET)
    log = structlog.get_logger("test")
    try:
        log.info("as_field", value=HARD_SECRET)
        log.info("as_repr", value=repr(HARD_SECRET), inside={"nested": [HARD_SECRET]})
        try:
            raise ValueError(f"cannot parse {HARD_SECRET!r}")
        except ValueError:
            log.debug("as_traceback", exc_info=True)
    finally:
        REDACTOR.clear()
    text = out.getvalue()
    for event in ("as_field", "as_repr", "as_traceback", "ValueError"):
        assert event in text  # control: the lines were written
    assert "tail-of-the-secret" not in text
    assert text.count("[REDACTED]") >= 4


# -- 11. Hard links ---------------------------------------------------------------------------------


def _sticky_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o1777)  # like /tmp: everyone may create files, only owners replace them
    return folder


@pytest.mark.skipif(os.geteuid() != 0, reason="the file must be root's, as a template is")
def test_a_hard_linked_file_in_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    """A root-owned file with a second name, in a folder others can write (sticky), is refused by the
    trust walk (exit 2), naming the links and the fix."""
    folder = _sticky_folder(tmp_path)
    template = folder / "app.env.j2"
    template.write_text('A={{ param("/a") }}\n')
    os.chmod(template, 0o640)
    os.link(template, tmp_path / "elsewhere.env.j2")
    with pytest.raises(UntrustedFile) as refused:
        read_trusted(template)
    assert refused.value.exit_code == 2
    assert "2 hard links" in refused.value.message
    assert str(folder) in refused.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="the file must be root's, as a template is")
def test_a_single_name_or_a_private_folder_is_read(tmp_path: Path) -> None:
    """Controls: the same file with one name in the sticky folder is read, and a hard-linked file in
    a folder only root can write is read."""
    folder = _sticky_folder(tmp_path)
    template = folder / "app.env.j2"
    template.write_text("A=1\n")
    os.chmod(template, 0o640)
    assert read_trusted(template) == b"A=1\n"
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    linked = private / "app.env.j2"
    os.link(template, linked)
    os.unlink(template)
    os.link(linked, private / "other")
    assert os.stat(linked).st_nlink == 2
    assert stat.S_IMODE(os.stat(private).st_mode) & 0o022 == 0
    assert read_trusted(linked) == b"A=1\n"
