"""Values that break naive quoting, shared by every test that proves a value reaches the app
byte for byte (system tests on the .deb, the wheel's first boot on each Debian release)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

# SSM keeps values up to 4 KB in its standard tier; larger ones need the advanced tier.
STANDARD_TIER_MAX_BYTES = 4096


def _block(mark: str, size: int) -> str:
    """`size` bytes of printable text (with the mark) that no compressor or escaper leaves alone."""
    chunk = f"{mark} {secrets.token_urlsafe(48)} \"'\\$`#=;\n"
    return (chunk * (size // len(chunk) + 1))[:size]


def hard_values(mark: str) -> dict[str, str]:
    """Environment variable name -> a value that carries `mark` and something hard to carry."""
    return {
        "DOUBLE_QUOTES": f'say "{mark}" twice ""',
        "LEADING_QUOTE": f'"{mark}',
        "SINGLE_QUOTES": f"it's '{mark}'",
        "BACKSLASHES": f"C:\\dir\\{mark}\\ and \\n is no newline \\",
        "DOLLARS": f"$HOME ${{PATH}} $$ $1 {mark}$",
        "BACKTICKS": f"`id` $(id) {mark}",
        "NEWLINES": f"line one\nline two {mark}\n",
        "CARRIAGE_RETURNS": f"a\rb {mark}\r\n",
        "TABS": f"\t{mark}\tx\t",
        "SPACES": f"   {mark} inside   ",
        "HASHES": f"# no comment {mark} #",
        "EQUALS": f"a=b={mark}==",
        "NON_ASCII": f"päßwörd Ωμέγα 日本語 🔑 {mark}",
        "INJECTION": f"harmless {mark}\nEVIL=1",
        "CONTINUATION": f"harmless {mark}\\\nEVIL_TOO=1",
        "FOUR_KB": _block(mark, 4096),
        "EIGHT_KB": _block(mark, 8192),
    }


def tier_for(value: str) -> dict[str, str]:
    """put_parameter's extra arguments for `value`: the advanced tier above 4 KB."""
    return {"Tier": "Advanced"} if len(value.encode()) > STANDARD_TIER_MAX_BYTES else {}


def template_lines(prefix: str, keys: Iterable[str]) -> str:
    """`KEY={{ param("PREFIX/KEY") }}` for each key."""
    return "".join(f'{key}={{{{ param("{prefix}/{key}") }}}}\n' for key in keys)
