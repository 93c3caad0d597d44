"""Guided labs: each primitive shown at work, with the commands that show it and a check.

A lab is data: a short text, and demos; a demo is an ``isolate`` command line and a
check of what it printed.  ``isolate lab run N`` runs the demos and shows each command and
its output; ``isolate lab check N`` runs them again quietly and says, for each, whether the
system behaved as the lab says it does.  The commands are the learner's to try by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Demo:
    __slots__ = ("args", "why", "expect")

    def __init__(self, args: list[str], why: str, expect: Callable[[str, str], str | None]) -> None:
        self.args = args  # isolate's arguments
        self.why = why
        self.expect = expect  # (stdout, stderr) -> None if as expected, else what went wrong


class Lab:
    __slots__ = ("number", "title", "text", "demos", "needs")

    def __init__(self, number: int, title: str, text: str, demos: list[Demo], needs: str = "") -> None:
        self.number = number
        self.title = title
        self.text = text.strip()
        self.demos = demos
        self.needs = needs  # "v2": only on a pure cgroup v2 host


def _has(*words: str) -> Callable[[str, str], str | None]:
    def check(out: str, err: str) -> str | None:
        missing = [w for w in words if w not in out + err]
        return f"expected to see {missing}" if missing else None

    return check


def _first_line(value: str) -> Callable[[str, str], str | None]:
    def check(out: str, err: str) -> str | None:
        first = (out.splitlines() or [""])[0].strip()
        return None if first == value else f"expected the first line to be {value!r}, got {first!r}"

    return check


def _result(test: Callable[[dict[str, object]], str | None]) -> Callable[[str, str], str | None]:
    def check(out: str, err: str) -> str | None:
        try:
            data = json.loads(out.splitlines()[-1])
        except (IndexError, ValueError):
            return "no run result (--json) in the output"
        return test(data)

    return check


def _ipc_differs(out: str, err: str) -> str | None:
    lines = out.split()
    return None if lines[:1] == ["lab"] and lines[1:2] != [os.readlink("/proc/self/ns/ipc")] else "same ipc namespace?"


def _upper_layer(out: str, err: str) -> str | None:
    import shutil
    import stat

    line = next((line for line in err.splitlines() if "upper layer kept at " in line), "")
    upper = line.rsplit(" ", 1)[-1] if line else ""
    if not upper or not os.path.isdir(upper):
        return "no upper layer was kept"
    try:
        whiteout = os.lstat(os.path.join(upper, "etc", "group"))
        found = {
            "new file": os.path.isfile(os.path.join(upper, "new")),
            "whiteout for /etc/group": stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0,
            "copied-up /etc/passwd": os.path.isfile(os.path.join(upper, "etc", "passwd")),
        }
    except OSError as exc:
        return f"upper layer incomplete: {exc}"
    finally:
        shutil.rmtree(os.path.dirname(upper), ignore_errors=True)  # the lab cleans what it kept
    missing = [k for k, v in found.items() if not v]
    return f"missing in the upper layer: {missing}" if missing else None


ESCAPE = (
    "import os\nos.makedirs('/jail', exist_ok=True)\nos.chroot('/jail')\n"
    "[os.chdir('..') for _ in range(64)]\nos.chroot('.')\n"
    "print('escaped: the host /etc/shadow is visible' if os.path.exists('/etc/shadow') else 'stayed inside')"
)
BB = ["--image", "lab-busybox"]

LABS = [
    Lab(
        1,
        "chroot, and why it is not enough",
        """
chroot(2) changes the root directory of one process, nothing else: the host's mounts are
still in its mount namespace, and a root process can chroot again into a subdirectory while
its working directory stays outside, then climb out with "..".  pivot_root(2) instead swaps
the root of the whole mount namespace and detaches the old one: there is nothing to climb to.
Code: isolate/spec.py (Chroot, PivotRoot).""",
        [
            Demo(
                ["run", "--mode", "chroot", "--", "python3", "-c", ESCAPE],
                "the classic escape, in chroot mode",
                _has("escaped"),
            ),
            Demo(["run", "--", "python3", "-c", ESCAPE], "the same escape under pivot_root", _has("stayed inside")),
        ],
    ),  # fmt: skip
    Lab(
        2,
        "pivot_root and the new root",
        """
The sandbox's root is an overlay (lower: the image, upper: a tmpfs that lives only in the
sandbox's mount namespace).  isolate mounts /proc, /sys, /dev and /tmp below it, then runs
`pivot_root . .` and detaches the old root.  --dry-run prints those steps.
Code: isolate/planner.py, isolate/overlay.py, isolate/mounts.py.""",
        [
            Demo(
                ["run", "--dry-run", "--", "true"],
                "the plan: overlay, mounts, pivot_root",
                _has("mount -t overlay", "pivot_root . ."),
            ),
            Demo(
                ["run", "--", "sh", "-c", "head -1 /proc/self/mountinfo; ls /"],
                "the root as seen inside",
                _has("overlay", "usr"),
            ),
        ],
    ),  # fmt: skip
    Lab(
        3,
        "the pid namespace and PID 1",
        """
clone(2) with CLONE_NEWPID makes the child PID 1 of a new pid namespace: it sees only its own
descendants, and orphans are re-parented to it.  A PID 1 ignores signals it has no handler
for; --init puts a small init in front that reaps and relays signals (the command is PID 2).
Code: isolate/_libc.py (clone_fork), isolate/init.py.""",
        [
            Demo(
                ["run", "--", "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"],
                "the command is PID 1",
                _first_line("1"),
            ),
            Demo(["run", "--init", "--", "sh", "-c", "echo $$"], "with --init it is PID 2", _first_line("2")),
        ],
    ),  # fmt: skip
    Lab(
        4,
        "the mount namespace and propagation",
        """
A new mount namespace starts as a copy of the host's.  Mounts made in it reach the host only
through shared propagation, so isolate first makes everything private (`mount
--make-rprivate /`).  Inside, the mount table is the sandbox's own.
Code: isolate/spec.py (MakeMountsPrivate).""",
        [
            Demo(["run", "--", "sh", "-c", "findmnt -n -o PROPAGATION /"], "propagation of the root", _has("private")),
        ],
    ),  # fmt: skip
    Lab(
        5,
        "uts and ipc namespaces",
        """
The UTS namespace gives the sandbox its own hostname; the IPC namespace its own System V IPC
objects and POSIX message queues (/dev/mqueue).
Code: isolate/planner.py (clone_flags), isolate/spec.py (SetHostname).""",
        [
            Demo(
                ["run", "--hostname", "lab", "--", "sh", "-c", "hostname; readlink /proc/self/ns/ipc"],
                "a hostname and an ipc namespace of its own",
                _ipc_differs,
            ),
        ],
    ),  # fmt: skip
    Lab(
        6,
        "overlayfs: copy-up and whiteouts",
        """
Writes go to the upper layer: a new file appears there; changing a lower file copies it up
first; deleting one leaves a whiteout (a 0/0 character device).  --keep keeps the upper layer.
Code: isolate/overlay.py.""",
        [
            Demo(["image", "build-busybox", "lab-busybox"], "a busybox image (no network)", _has("lab-busybox")),
            Demo(
                ["run", "--keep", *BB, "--", "sh", "-c", "echo new > /new; rm /etc/group; echo x >> /etc/passwd"],
                "write, delete and change, keeping the upper layer",
                _upper_layer,
            ),
        ],
    ),  # fmt: skip
    Lab(
        7,
        "image layers",
        """
An image is layers, each unpacked once into the store and used as an overlay lower layer.
Code: isolate/images/.""",
        [
            Demo(["image", "build-busybox", "lab-busybox"], "a busybox image", _has("lab-busybox")),
            Demo(["image", "inspect", "lab-busybox"], "its layers on disk", _has("layer_dirs", "diff_ids")),
            Demo(["run", *BB, "--", "sh", "-c", "echo from busybox"], "a run on it", _has("from busybox")),
        ],
    ),  # fmt: skip
    Lab(
        8,
        "memory limit and the OOM killer",
        """
The memory controller charges every page the sandbox uses; past the limit the kernel's OOM
killer ends a process and counts it (memory.events oom_kill on v2, memory.oom_control on v1).
Code: isolate/cgroups/.""",
        [
            Demo(
                [
                    "run",
                    "--json",
                    "--memory",
                    "32M",
                    "--memory-swap",
                    "32M",
                    "--",
                    "python3",
                    "-c",
                    "bytearray(128<<20)",
                ],
                "a 128 MiB allocation under a 32 MiB limit",
                _result(lambda r: None if r["status"] == "oom-killed" else f"status {r['status']}"),
            ),
        ],
    ),  # fmt: skip
    Lab(
        9,
        "CPU bandwidth: cpu.max throttling",
        """
--cpus 0.2 sets a quota of 20 ms per 100 ms period (cpu.max on v2, cfs_quota_us on v1): a
spinner gets 0.2 s of CPU per second and is throttled the rest of the time.""",
        [
            Demo(
                ["run", "--json", "--cpus", "0.2", "--wall-time", "1s", "--", "sh", "-c", "while :; do :; done"],
                "a CPU spinner for one second",
                _result(
                    lambda r: (
                        None
                        if 0.1 <= float(r["cpu_time"]) <= 0.4 and r["nr_throttled"]  # type: ignore[arg-type]
                        else f"cpu_time {r['cpu_time']}, throttled {r['nr_throttled']}"
                    )
                ),
            ),
        ],
    ),  # fmt: skip
    Lab(
        10,
        "pids.max against a fork bomb",
        """
The pids controller caps the number of processes; a fork bomb hits the limit instead of the
host's process table.""",
        [
            Demo(
                ["run", "--json", "--pids", "16", "--wall-time", "2s", "--", "sh", "-c", "while :; do sleep 5 & done"],
                "a fork bomb under --pids 16",
                _result(lambda r: None if r["pids_limit_hits"] else "pids.max was never hit"),
            ),
        ],
    ),  # fmt: skip
    Lab(
        11,
        "cgroup v1 and v2 side by side",
        """
v1: one hierarchy per controller (memory.limit_in_bytes, cpu.cfs_quota_us, ...); v2: one
unified tree (memory.max, cpu.max, ...), controllers handed down by cgroup.subtree_control.
The same --memory becomes a different file: --dry-run shows which, and what it means.""",
        [
            Demo(["doctor"], "this host's layout", _has("cgroups")),
            Demo(
                ["run", "--dry-run", "--memory", "64M", "--", "true"],
                "the file --memory writes here",
                _has("67108864 > /sys/fs/cgroup/"),
            ),
        ],
    ),  # fmt: skip
    Lab(
        12,
        "capabilities and seccomp",
        """
Root in a sandbox keeps only a few capabilities (no CAP_SYS_ADMIN: no mount) and a seccomp
filter refuses dangerous syscalls; --privileged turns both off (unsafe).
Code: isolate/security.py, isolate/seccomp.py.""",
        [
            Demo(
                [
                    "run",
                    "--",
                    "sh",
                    "-c",
                    "grep -E 'CapEff|Seccomp:' /proc/self/status; mount -t tmpfs x /mnt && "
                    "echo mounted || echo mount refused",
                ],
                "root inside, defended",
                _has("Seccomp:\t2", "mount refused"),
            ),
            Demo(
                ["run", "--privileged", "--", "sh", "-c", "mount -t tmpfs x /mnt && echo mounted"],
                "the same, privileged (the mount stays in the sandbox's namespace)",
                _has("mounted"),
            ),
        ],
    ),  # fmt: skip
    Lab(
        14,
        "network namespaces and a veth pair",
        """
Each sandbox has its own network namespace: only lo, no route out.  A veth pair is two
interfaces joined back to back; with one end in each sandbox (moved there by netlink) and
the two addresses of a /30, the two sandboxes reach each other and nothing else.
Code: isolate/network.py (pyroute2), isolate/spec.py (LoopbackUp).""",
        [
            Demo(["rm", "-f", "lab-a", "lab-b"], "start clean (errors are fine here)", lambda out, err: None),
            Demo(["image", "build-busybox", "lab-busybox"], "a busybox image (it has ping)", _has("lab-busybox")),
            Demo(["run", "-d", "--name", "lab-a", *BB, "--", "sleep", "60"], "sandbox a", lambda out, err: None),
            Demo(["run", "-d", "--name", "lab-b", *BB, "--", "sleep", "60"], "sandbox b", lambda out, err: None),
            Demo(["exec", "lab-a", "ip", "-o", "link"], "before: a has only lo", _has("lo")),
            Demo(["net", "connect", "lab-a", "lab-b"], "a veth pair between them", _has("lab-a 10.213.0.1")),
            Demo(
                ["exec", "lab-a", "ping", "-c", "1", "-W", "2", "10.213.0.2"], "a reaches b", _has("1 packets received")
            ),
            Demo(
                ["rm", "-f", "lab-a", "lab-b"],
                "remove both (their ends of the pair go with them)",
                lambda out, err: None,
            ),
        ],
    ),  # fmt: skip
    Lab(
        13,
        "user namespaces",
        """
In a user namespace root inside is an ordinary id outside (uid_map); what it creates on a
volume belongs to that id, and the host root's files are out of its reach.  An ordinary user
running isolate always gets one (rootless).  Code: isolate/spawn.py (_map_ids).""",
        [
            Demo(
                ["run", "--userns", "--", "sh", "-c", "id -u; cat /proc/self/uid_map"],
                "root inside, mapped",
                _has("0 ", "65536"),
            ),
        ],
    ),  # fmt: skip
]


LABS.sort(key=lambda lab: lab.number)


def get(number: int) -> Lab:
    for lab in LABS:
        if lab.number == number:
            return lab
    from isolate.errors import ConfigError

    raise ConfigError(f"no lab {number}; `isolate lab list` lists them")


def command_line(demo: Demo) -> str:
    import shlex

    return "isolate " + " ".join(shlex.quote(a) for a in demo.args)


def run_demo(demo: Demo) -> tuple[int, str, str]:
    """Run a demo with the same Python that runs isolate (``-m isolate``)."""
    proc = subprocess.run([sys.executable, "-m", "isolate", *demo.args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def unavailable(lab: Lab) -> str | None:
    if lab.needs == "v2":
        from isolate import cgroups

        if cgroups.layout().kind != "v2":
            return "this lab needs a cgroup v2 host: run it in the Vagrant VM (vagrant ssh -c 'sudo isolate lab run N')"
    return None
