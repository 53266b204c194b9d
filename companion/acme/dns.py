"""DNS-01 through certbot's DNS plugins: which settings fit together, the plugin's certbot arguments, and the
check of its credentials file before every order.

The credentials file is never read here: it is only checked (a regular file nobody else may read) and named
on certbot's command line, so its secrets reach neither a log line nor the certs volume.
"""

from __future__ import annotations

import os
import stat


def certbot_args(plugin: str, credentials: str, propagation: int) -> list[str]:
    """certbot's authenticator arguments for one DNS-01 order: `--authenticator dns-x --dns-x-credentials FILE
    --dns-x-propagation-seconds N` (each option only when set)."""
    args = ["--authenticator", plugin, "--preferred-challenges", "dns"]
    if credentials:
        args += [f"--{plugin}-credentials", credentials]
    if propagation >= 0:
        args += [f"--{plugin}-propagation-seconds", str(propagation)]
    return args


def credentials_problem(path: str) -> str:
    """Why the credentials file must not be used, or '': missing, not a regular file, or readable by every
    user (certbot only warns about that; here the order is refused until the mode is fixed)."""
    if not path:
        return ""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"dns credentials {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"dns credentials {path}: not a regular file"
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IROTH:
        return (
            f"dns credentials {path} can be read by every user (mode {mode:04o}); refusing to use it: "
            "chmod 600 it, or give the Docker secret `mode: 0400`"
        )
    return ""
