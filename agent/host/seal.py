"""The copy of a service's set sealed to this machine (on_outage = "sealed"): encrypted with
`systemd-creds encrypt` into /var/lib/secrets-agent/NAME.cred (root only, 0600), decrypted at a start
that finds SSM down after a stop or a reboot.

systemd-creds binds the copy to this machine: `--with-key=auto` uses the host key
(/var/lib/systemd/credential.secret) and, where a TPM2 exists, the TPM too; `seal_with = "tpm2"`
requires the TPM. The plaintext only ever crosses a pipe (host/systemd.py's runner); the copy on
disk is ciphertext. A copy from another machine (a cloned volume, an image baked with a sealed copy)
does not decrypt here and is treated as absent, with one log line.
"""

from __future__ import annotations

import os
from typing import Optional

import structlog

from agent.config import ServiceSettings
from agent.errors import AgentError, OutputError, StateError
from agent.host.kept import KEPT_MAX_BYTES, KeptSet, read_owned
from agent.host.output import write_secret_file
from agent.host.systemd import systemd_creds

log = structlog.get_logger("secrets-agent")

# systemd-creds writes base64 text about 4/3 of the plaintext, plus its header.
SEALED_MAX_BYTES = 2 * KEPT_MAX_BYTES


def credential_name(service: ServiceSettings) -> str:
    """The name sealed into the copy: decrypting it under another service's name fails."""
    return f"secrets-agent-{service.name}"


def is_sealed(service: ServiceSettings) -> bool:
    """True when NAME has a sealed copy (a regular file; not yet decrypted)."""
    try:
        return os.lstat(service.sealed_path).st_size > 0
    except OSError:
        return False


def seal(service: ServiceSettings, held: KeptSet) -> None:
    """Encrypt `held` to this machine and write it atomically to the sealed folder (0600 in 0700)."""
    done = systemd_creds(
        "encrypt",
        f"--name={credential_name(service)}",
        f"--with-key={service.outage.seal_with}",
        "-",
        "-",
        data=held.to_bytes(),
    )
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1:] or ["no detail"]
        fix = (
            "the agent unit reaches no TPM2: give it the TPM with a drop-in (README, When SSM is down: "
            'PrivateDevices=no and DeviceAllow=/dev/tpmrm0 rw), or use seal_with = "auto" or "host"'
            if service.outage.seal_with == "tpm2"
            else "see `systemd-creds has-tpm2` and the agent unit's journal"
        )
        raise OutputError(f"systemd-creds could not seal {service.name}'s set ({detail[0]}): {fix}")
    # Ciphertext only: it may (and must, to outlive a reboot) live on persistent disk.
    write_secret_file(service.sealed_path, done.stdout, allow_persistent=True)


def unseal(service: ServiceSettings) -> Optional[KeptSet]:
    """The sealed set of NAME, or None when there is none or it does not decrypt on this machine."""
    path = service.sealed_path
    try:
        data = read_owned(path, SEALED_MAX_BYTES)
    except StateError as exc:
        log.warning("sealed_copy_unreadable", path=str(path), error=exc.message)
        return None
    if data is None:
        return None
    done = systemd_creds("decrypt", f"--name={credential_name(service)}", "-", "-", data=data)
    if done.returncode != 0:
        log.warning(
            "sealed_copy_not_decrypted",
            path=str(path),
            reason="sealed on another machine (a cloned volume or image, another host key or TPM), "
            "or damaged: ignored; the next successful render seals a new one",
        )
        return None
    try:
        return KeptSet.from_bytes(done.stdout, str(path))
    except AgentError as exc:
        log.warning("sealed_copy_unreadable", path=str(path), error=exc.message)
        return None


def remove_sealed(service: ServiceSettings) -> bool:
    """Delete NAME's sealed copy; True if there was one."""
    try:
        os.unlink(service.sealed_path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(
            f"cannot remove {service.sealed_path} ({exc.strerror}): remove it by hand"
        ) from None
    return True
