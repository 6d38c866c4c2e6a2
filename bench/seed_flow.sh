#!/usr/bin/env bash
# The seed's flow, for comparison: one `aws ssm get-parameter` process per parameter, each value
# appended to a .env file. Usage: seed_flow.sh AWS_CLI OUT NAME...
set -euo pipefail
aws=$1
out=$2
shift 2
umask 077
: >"$out"
for name in "$@"; do
    value=$("$aws" ssm get-parameter --name "$name" --with-decryption --query Parameter.Value --output text)
    key=${name##*/}
    printf '%s=%s\n' "${key^^}" "$value" >>"$out"
done
