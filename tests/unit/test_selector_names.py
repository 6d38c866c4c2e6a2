"""SSM's naming rules, checked offline for `secrets-agent validate`: what SSM would refuse is named with
the reason, and everything SSM takes (public /aws/service names, ARNs, references) passes."""

from __future__ import annotations

from typing import Optional

import pytest

from agent.aws.selectors import path_problem, selector_problem

SELECTORS: list[tuple[str, Optional[str]]] = [
    ("/prod/app/DATABASE_URL", None),
    ("/prod/app/db.url-2_x", None),
    ("plain-name", None),
    ("/prod/x:3", None),
    ("/prod/x:live", None),
    ("/prod/x:blue.green-1", None),
    ("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64", None),
    ("/aws/reference/secretsmanager/prod/db", None),
    ("/aws/reference/secretsmanager/prod/db+key=v@x", None),
    ("arn:aws:ssm:eu-west-1:123456789012:parameter/prod/x", None),
    ("arn:aws:ssm:eu-west-1:123456789012:parameter/prod/x:7", None),
    ("/prod/db name", "'db name' holds a character SSM refuses"),
    ("/prod/db$", "'db$' holds a character SSM refuses"),
    ("prod/x", "a name with levels must begin with /"),
    ("/prod//x", "an empty level (//)"),
    ("/" + "/".join(["l"] * 16), "more than 15 levels"),
    ("/" + "x" * 1011, "longer than 1011 characters"),
    ("/prod/x:0", "versions start at 1"),
    ("/prod/x:1st", "'1st' is neither a version number nor a valid label"),
    ("/prod/x:bad label", "'bad label' is neither a version number nor a valid label"),
    ("/aws/reference/secretsmanager/bad name", "the secret's name holds a character it cannot"),
]


@pytest.mark.parametrize(("selector", "problem"), SELECTORS)
def test_selector_problem(selector: str, problem: Optional[str]) -> None:
    """A selector SSM would refuse gets the reason; a valid one gets None."""
    assert selector_problem(selector) == problem


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/prod/app/", None),
        ("/", None),
        ("/aws/service/global-infrastructure/regions", None),
        ("prod/app/", "a path begins with /"),
        ("/prod/a b/", "'a b' holds a character SSM refuses"),
    ],
)
def test_path_problem(path: str, problem: Optional[str]) -> None:
    """A params() path SSM would refuse gets the reason; a valid one gets None."""
    assert path_problem(path) == problem
