"""The images section: scripts/bench-images, run with this run's cgroup parent and state directory."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from benchkit import SCRIPTS_DIR
from benchkit.context import Context


def run_images(ctx: Context, quick: bool) -> dict[str, Any]:
    """scripts/bench-images with this run's cgroup parent and state directory; its JSON."""
    script = os.path.join(SCRIPTS_DIR, "bench-images")
    json_path = os.path.join(ctx.tmp, "images.json")
    runs = ["--runs", "2", "--start-runs", "30"] if quick else []
    proc = subprocess.run([ctx.lib_python, script, *runs, "--cgroup-parent", ctx.cgroup_parent, "--json", json_path])
    if proc.returncode != 0 or not os.path.exists(json_path):
        return {"error": f"scripts/bench-images failed (status {proc.returncode})"}
    with open(json_path) as f:
        return dict(json.load(f))
