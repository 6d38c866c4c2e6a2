"""A small helper process that runs commands for the benchmark and reports each one's wall time and rusage.

Why a helper: Linux carries a process's peak RSS across exec, and a child spawned straight from the
benchmark (which holds moto, ~200 MiB) would report the benchmark's size, not its own. Forked from
this small interpreter (started with -S), a child starts from a few MiB.

Protocol: one JSON request per stdin line, {"argv", "env", "stdout", "stderr"} (paths), one JSON
answer per stdout line, {"seconds", "max_rss_kib", "cpu_seconds", "exit_code"}.
"""

import json
import os
import sys
import time


def _run(request: dict) -> dict:  # type: ignore[type-arg]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: wire stdout/stderr to the given files, then become the command
        try:
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(target, fd)
                os.close(target)
            os.execve(request["argv"][0], request["argv"], request["env"])  # noqa: S606 - argv, no shell
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    return {
        "seconds": time.perf_counter() - started,
        "max_rss_kib": usage.ru_maxrss,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "exit_code": os.waitstatus_to_exitcode(status),
    }


def main() -> None:
    """Serve requests until stdin closes."""
    for line in sys.stdin:
        sys.stdout.write(json.dumps(_run(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
