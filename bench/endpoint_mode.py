"""imds_endpoint_mode = "auto" against "ipv4" on an IPv4-only host: what the race costs a render.

The host is a network namespace of its own (devtools/netns.py): its loopback up, 169.254.169.254
on it (the fake IMDSv2 on port 80) and moto's server on its 127.0.0.1; IPv6 has no route but ::1,
so the race's request to [fd00:ec2::254] fails at once, as on an IPv4-only instance. Two
measurements, interleaved in random order within each round, medians: cold `secrets-agent render`
processes (the whole render, N parameters), and the IMDS stage alone in this process (the address
choice, token, region, role credentials: the only part the mode changes), whose difference is the
check (at most MAX_EXTRA_MS).

Runs alone: `python -m bench.endpoint_mode` (root: it makes a network namespace).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import structlog

from bench.stack import CLI_ACCESS_KEY_ID, CLI_SECRET_ACCESS_KEY, REGION, memory_backed_root
from devtools.fakeimds import FakeImds
from devtools.netns import IPV4_IMDS, inside, lone_namespace, serve_moto

MODES = ("ipv4", "auto")
PARAMETERS = 10
COLD_ROUNDS = 15
STAGE_ROUNDS = 200
MAX_EXTRA_MS = 5.0
NAMESPACE = "sa-bench-ipv4"
SERVICE = "endpoint-mode"
ROLE = "bench-role"


@dataclass
class EndpointModeResults:
    """Seconds per mode: cold renders and the in-process IMDS stage."""

    cold: dict[str, list[float]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    stage: dict[str, list[float]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    note: str = ""
    violations: list[str] = field(default_factory=list)

    def median_ms(self, kind: str, mode: str) -> float:
        """The median of one series, in milliseconds."""
        values = (self.cold if kind == "cold" else self.stage)[mode]
        return statistics.median(values) * 1000 if values else float("nan")


def measure(cold_rounds: int = COLD_ROUNDS, stage_rounds: int = STAGE_ROUNDS) -> EndpointModeResults:
    """Both measurements in one IPv4-only namespace; a note instead when this host cannot make one."""
    results = EndpointModeResults()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        results.note = "Not run: a network namespace needs root and iproute2."
        return results
    # moto's web server logs every request.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="secrets-agent-bench-mode-"))
    runtime = Path(tempfile.mkdtemp(prefix="secrets-agent-bench-mode-", dir=memory_backed_root()))
    try:
        with lone_namespace(NAMESPACE, loopback_addresses=(IPV4_IMDS,)) as namespace:
            imds = FakeImds(host=IPV4_IMDS, port=80, region=REGION, role=ROLE)
            inside(namespace, imds.start)
            moto = inside(namespace, lambda: serve_moto("127.0.0.1"))
            try:
                ssm_url = f"http://127.0.0.1:{moto.server_port}"
                values = inside(namespace, lambda: _seed(ssm_url))
                (workdir / f"{SERVICE}.env.j2").write_text(
                    "".join(f'{name.rsplit("/", 1)[1]}={{{{ param("{name}") }}}}\n' for name in values)
                )
                print(f"endpoint mode: {cold_rounds} rounds of cold renders, ipv4 and auto", flush=True)
                for _ in range(cold_rounds):
                    for mode in random.sample(MODES, len(MODES)):
                        seconds = _cold_render(namespace, mode, ssm_url, (workdir, runtime), values)
                        results.cold[mode].append(seconds)
                print(f"endpoint mode: {stage_rounds} rounds of the IMDS stage in process", flush=True)
                inside(namespace, lambda: _stage_rounds(results, workdir, stage_rounds))
            finally:
                moto.shutdown()
                moto.server_close()
                imds.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    extra = results.median_ms("stage", "auto") - results.median_ms("stage", "ipv4")
    if not extra <= MAX_EXTRA_MS:
        results.violations.append(
            f"endpoint mode: auto costs an IPv4-only render {extra:.2f} ms more than ipv4 "
            f"(limit {MAX_EXTRA_MS:g})"
        )
    return results


def _seed(ssm_url: str) -> dict[str, str]:
    import boto3

    client = boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url=ssm_url,
        aws_access_key_id=CLI_ACCESS_KEY_ID,
        aws_secret_access_key=CLI_SECRET_ACCESS_KEY,
    )
    values = {f"/bench-mode/P{index}": f"value-{index}-{random.random():.12f}" for index in range(PARAMETERS)}
    for name, value in values.items():
        client.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return values


def _cold_render(
    namespace: str, mode: str, ssm_url: str, folders: tuple[Path, Path], values: dict[str, str]
) -> float:
    config, runtime = folders
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": mode,
        "AWS_ENDPOINT_URL_SSM": ssm_url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "SECRETS_AGENT_CONFIG_DIR": str(config),
        "SECRETS_AGENT_RUNTIME_DIR": str(runtime),
    }
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-m", "agent", "render", SERVICE]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"render with imds_endpoint_mode={mode} failed ({done.returncode}):\n{done.stderr[-2000:]}"
        )
    written = (runtime / SERVICE / "env").read_text()
    missing = [name for name, value in values.items() if value not in written]
    if missing:
        raise SystemExit(f"render with imds_endpoint_mode={mode} lacks {', '.join(missing)}")
    return seconds


def _stage_rounds(results: EndpointModeResults, config: Path, rounds: int) -> None:
    """The IMDS stage of a render, as the render runs it (agent/imds_endpoints.open_client)."""
    from agent.aws.imds_endpoints import open_client
    from agent.aws.retry import Deadline
    from agent.config import load_agent_settings

    # The agent's debug lines (one per IMDS request) would flood the console: warnings only here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = {
        mode: load_agent_settings({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": mode}, config_dir=str(config))
        for mode in MODES
    }
    try:
        for _ in range(rounds):
            for mode in random.sample(MODES, len(MODES)):
                started = time.perf_counter()
                client = open_client(settings[mode], Deadline(10))
                try:
                    client.region()
                    client.role_credentials()
                finally:
                    client.close()
                results.stage[mode].append(time.perf_counter() - started)
    finally:
        structlog.reset_defaults()


def report(results: Optional[EndpointModeResults], emit: Callable[[str], None]) -> None:
    """The report's section."""
    emit("## 8. IMDS endpoint mode: auto against ipv4 on an IPv4-only host")
    emit("")
    if results is None:
        emit("Not run (--skip-endpoint-mode).")
        emit("")
        return
    if results.note:
        emit(results.note)
        emit("")
        return
    emit(
        "`auto` (the default) races a token request to 169.254.169.254 and [fd00:ec2::254]; `ipv4` "
        "asks the first only. The host is a network namespace with IMDS's IPv4 address on its loopback "
        "and no IPv6 route, as an IPv4-only instance. Cold renders: "
        f"{len(results.cold['ipv4'])} interleaved rounds of `secrets-agent render` ({PARAMETERS} "
        f"parameters); IMDS stage: {len(results.stage['ipv4'])} interleaved rounds in one process "
        "(choice, token, region, role credentials). Medians."
    )
    emit("")
    emit("| measured | ipv4 ms | auto ms | auto - ipv4 ms | auto / ipv4 |")
    emit("|---|---:|---:|---:|---:|")
    for kind, label in (("cold", "cold render"), ("stage", "IMDS stage")):
        ipv4, auto = results.median_ms(kind, "ipv4"), results.median_ms(kind, "auto")
        emit(f"| {label} | {ipv4:.2f} | {auto:.2f} | {auto - ipv4:+.2f} | {auto / ipv4:.3f} |")
    emit("")
    extra = results.median_ms("stage", "auto") - results.median_ms("stage", "ipv4")
    verdict = "holds" if extra <= MAX_EXTRA_MS else "FAILS"
    quartiles = statistics.quantiles([seconds * 1000 for seconds in results.cold["ipv4"]], n=4)
    emit(
        f"Check: auto costs an IPv4-only render at most {MAX_EXTRA_MS:g} ms more (the IMDS stage is the "
        f"only part the mode changes): {extra:+.2f} ms, {verdict}. For scale, the cold ipv4 renders' "
        f"interquartile range is {quartiles[2] - quartiles[0]:.1f} ms."
    )
    emit("")


def main() -> int:
    """Run this section alone and print it."""
    results = measure()
    lines: list[str] = []
    report(results, lines.append)
    print("\n".join(lines))
    if results.violations:
        print("FAILED: " + "; ".join(results.violations), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
