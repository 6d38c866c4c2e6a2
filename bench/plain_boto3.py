"""What a user gets without the agent's retry policy: plain boto3 `get_parameters` with its defaults.

`python -m bench.plain_boto3 OUT NAME...` fetches the names 10 at a time with a default boto3 client
(region, endpoint, IMDS credentials and AWS_RETRY_MODE from the environment) and writes OUT.
Exit 0 on success, 1 when a call fails after boto3's own retries.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

BATCH = 10


def main(argv: Optional[list[str]] = None) -> int:
    """Fetch and write; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    out, names = args[0], args[1:]
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("ssm")
    lines = []
    for start in range(0, len(names), BATCH):
        try:
            response = client.get_parameters(Names=names[start : start + BATCH], WithDecryption=True)
        except ClientError as error:
            attempts = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
            code = error.response.get("Error", {}).get("Code")
            print(f"get_parameters failed with {code} after {attempts} attempts", file=sys.stderr)
            return 1
        lines += [f"{p['Name'].rsplit('/', 1)[1].upper()}={p['Value']}\n" for p in response["Parameters"]]
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.writelines(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
