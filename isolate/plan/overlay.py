"""The writable root: overlayfs with the image as lower layers and a fresh upper layer.

The upper and work directories live in a tmpfs that is mounted inside the sandbox's own
mount namespace, so when the sandbox ends the kernel drops them with the namespace and
nothing is left on the host, even when the supervisor is killed.  ``--keep`` puts them in
a host directory instead, so the changes can be inspected afterwards.
"""

from __future__ import annotations

import os

from isolate.errors import ConfigError
from isolate.plan.steps import MakeDir, Mount, Step


def stage_steps(stage_dir: str) -> list[Step]:
    """A private tmpfs for everything the sandbox makes: upper, work, root and host skeleton."""
    return [Mount("tmpfs", stage_dir, "tmpfs", 0, "mode=0700", host_target=True)]


def overlay_steps(lowers: list[str], upper: str, work: str, root: str) -> list[Step]:
    """``lowers`` top first, as in overlayfs's lowerdir= option (filesystems/overlayfs.rst)."""
    for path in lowers + [upper, work]:
        if "," in path or ":" in path:
            raise ConfigError(f"{path}: overlayfs cannot take a layer path holding ',' or ':'; rename it")
    data = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if len(data) >= os.sysconf("SC_PAGESIZE"):
        raise ConfigError("too many or too long layer paths: overlayfs takes at most one page of options")
    steps: list[Step] = []
    for path in (upper, work, root):
        steps.append(MakeDir(path, 0o755, host_path=True))
    steps.append(Mount("overlay", root, "overlay", 0, data, host_target=True))
    return steps
