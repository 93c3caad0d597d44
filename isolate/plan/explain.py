"""``--explain``: the plan of a run as the shell commands that do the same by hand.

It prints the very Plan the runtime executes (builder.build_plan): the parent's cgroup
work first (directories made, each file written with its value and what it means), then
the child's namespaces and steps in order, down to the exec.  ``--dry-run`` stops there.
"""

from __future__ import annotations

import shlex

from isolate.limits import CGROUP_FILES
from isolate.plan.steps import Plan

# file name -> the limit it carries, for the comment after each write
_MEANING = {
    "memory.limit_in_bytes": "--memory", "memory.max": "--memory",
    "memory.memsw.limit_in_bytes": "--memory-swap", "memory.swap.max": "--memory-swap",
    "cpu.cfs_period_us": "--cpus", "cpu.cfs_quota_us": "--cpus", "cpu.max": "--cpus",
    "cpu.shares": "--cpu-weight", "cpu.weight": "--cpu-weight",
    "cpuset.cpus": "--cpuset", "cpuset.mems": "--cpuset", "pids.max": "--pids", "io.weight": "--io-weight",
}  # fmt: skip


def cgroup_lines(plan: Plan, writes: list[tuple[str, str]]) -> list[str]:
    """The parent's cgroup commands for ``writes`` ((path, value) pairs, in order)."""
    if not plan.cgroup_version:
        return []
    version = plan.cgroup_version
    lines = [f"mkdir -p {d}" for d in sorted(set(plan.cgroup_dirs.values()))]
    for path, value in writes:
        name = path.rsplit("/", 1)[1]
        option = _MEANING.get(name, "")
        table = CGROUP_FILES.get(option.lstrip("-").replace("-", "_"), ("", ""))
        meaning = table[0] if version == "v1" else table[1]
        comment = f"  # {option} ({version}: {meaning})" if option else ""
        lines.append(f"echo {shlex.quote(value)} > {path}{comment}")
    return lines


def explain(plan: Plan) -> list[str]:
    """Every command of the run, in order, as lines of shell."""
    lines = [f"# sandbox {plan.sandbox_id}: the parent"]
    if plan.cgroup_version:
        from isolate import cgroups

        backend = cgroups.backend()
        group = cgroups.open_cgroup(plan.cgroup_version, plan.cgroup_dirs)
        writes = group.describe(plan.limits) if backend is not None else []
        lines += cgroup_lines(plan, writes)
    if plan.userns:
        maps = ", ".join(f"{a} {b} {c}" for a, b, c in plan.userns)
        lines.append(f"# uid_map and gid_map of the child: {maps}")
    lines.append("# the child (new namespaces), then the command")
    lines += plan.shell()
    return lines
