"""`python -m agent` is the same as the `secrets-agent` command."""

from agent.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
