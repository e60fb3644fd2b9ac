"""Third-party plugins installed for real in a folder on PYTHONPATH (a dist-info with an entry point), and the
`slotrun` command run in a subprocess that sees them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def install_dist(site: Path, dist: str, entry_point: str, module_source: str) -> None:
    """Distribution `dist` whose module (dist with "_" for "-") is `module_source`, registered as the slotrun
    entry point `entry_point`."""
    module = dist.replace("-", "_")
    (site / f"{module}.py").write_text(module_source)
    info = site / f"{module}-1.0.dist-info"  # a dist-info folder names its distribution up to the first "-"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[slotrun]\n{entry_point} = {module}\n")


def install_fake_dist(site: Path, name: str, module_source: str) -> None:
    """Module `name`, distribution `name` with "-" for "_", entry point `name`."""
    install_dist(site, name.replace("_", "-"), name, module_source)


def slotrun_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "slotrun.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
