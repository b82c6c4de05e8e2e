"""Installing the Debian packages that tests drive for real (postgresql, chromium)."""

from __future__ import annotations

import shutil
import subprocess


def apt_install(package: str) -> str | None:
    """Install a Debian package with apt-get (needs root).

    The install is tried first without ``apt-get update``, which is slow and needs the network,
    and retried after it only if the package lists are stale.

    Args:
        package: the Debian package name.

    Returns:
        Why it could not be installed, or None on success.
    """
    if shutil.which("apt-get") is None:
        return f"apt-get not available to install {package}"
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"apt-get install {package} failed: {result.stderr.strip()[-200:]}"
    return None
