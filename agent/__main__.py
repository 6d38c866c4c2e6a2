"""The `secrets-agent` command's entry point; `python -m agent` is the same command.

The agent is a short-lived process: it starts, renders one file and exits. Importing boto3
and botocore allocates hundreds of thousands of objects, and the cyclic garbage collector
would walk them again and again while they load, with nothing to free (about a fifth of a
cold start, see bench/RESULTS.md). So the collector is off for the whole run, and every
object is frozen at exit so the interpreter's final collection has nothing to walk.
Reference counting still frees everything that is not in a cycle.
"""

import atexit
import gc


def collector_off() -> None:
    """Turn the cyclic collector off for the rest of the process and freeze the heap at exit."""
    gc.disable()
    atexit.register(gc.freeze)


def run() -> int:
    """Run the command line with the cyclic collector off; returns the exit code."""
    collector_off()
    from agent.cli import main  # noqa: PLC0415 - imported with the collector already off

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
