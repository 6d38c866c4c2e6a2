"""`secrets-agent validate NAME`: everything about a service that can be checked offline, with no AWS
call and no credentials: its settings (and the format and on_change pair), who could change its files,
its template's syntax and the names it gives SSM. For CI pipelines and image builds."""

from __future__ import annotations

from typing import TextIO

from agent.aws.selectors import NAMING_RULES, path_problem, selector_problem
from agent.config import AgentSettings, ServiceSettings
from agent.errors import TemplateError
from agent.render import read_template


def command(settings: AgentSettings, service: ServiceSettings, out: TextIO) -> int:
    """Check NAME's template and names (its settings were loaded, and so checked, by the caller).

    Raises the error render would raise for the same file (UntrustedFile and ConfigError exit 2,
    TemplateError exit 3), so a pipeline sees the exit code the instance would."""
    template = read_template(service)  # trust, then syntax; include/extends/import refused
    needs = template.requirements
    problems = [
        f"{selector}: {problem}"
        for selector in needs.names
        if (problem := selector_problem(selector)) is not None
    ] + [
        f"params({path!r}): {problem}"
        for path, _ in needs.paths
        if (problem := path_problem(path)) is not None
    ]
    if problems:
        raise TemplateError(
            f"{service.template_path} names what SSM would refuse: {'; '.join(problems)}; {NAMING_RULES}"
        )
    out.write(
        f"{service.name}: valid (settings, ownership, template syntax, {len(needs.names)} parameter names, "
        f"{len(needs.paths)} paths, format {service.format} with on_change {service.on_change}); "
        "no AWS call was made\n"
    )
    return 0
