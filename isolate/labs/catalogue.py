"""The labs, in order: each one's text, the code it cites, and its demos with their checks.

Data only.  ``Code`` cites public modules and names of the package; tests/test_labs.py
imports each one, so a rename that leaves a lab pointing at nothing fails there.
"""

from __future__ import annotations

from isolate.labs.checks import (
    AnyOutput,
    CpuThrottled,
    FirstLine,
    Has,
    HostnameAndOwnIpc,
    Lacks,
    PidsLimitHit,
    StatusIs,
    UpperLayerKept,
)
from isolate.labs.records import Code, Demo, Lab

# A root process's way out of a chroot: chroot deeper, climb "..", chroot to where it landed.
ESCAPE = (
    "import os\nos.makedirs('/jail', exist_ok=True)\nos.chroot('/jail')\n"
    "[os.chdir('..') for _ in range(64)]\nos.chroot('.')\n"
    "print('escaped: the host /etc/shadow is visible' if os.path.exists('/etc/shadow') else 'stayed inside')"
)
BUSYBOX = ("--image", "lab-busybox")  # built by the labs that use it (image build-busybox: no network)
LAB15 = (("ISOLATE_STATE_DIR", "/run/isolate-lab15"),)  # its own: its gc touches no other sandbox
CGROUPS = (Code("isolate.cgroups.v2", "V2Cgroup"), Code("isolate.cgroups.v1", "V1Cgroup"))

LABS: tuple[Lab, ...] = (
    Lab(
        1,
        "chroot, and why it is not enough",
        """\
chroot(2) changes the root directory of one process, nothing else: the host's mounts are
still in its mount namespace, and a root process can chroot again into a subdirectory while
its working directory stays outside, then climb out with "..".  pivot_root(2) instead swaps
the root of the whole mount namespace and detaches the old one: there is nothing to climb to.""",
        (
            Demo(("run", "--mode", "chroot", "--", "python3", "-c", ESCAPE), "the classic escape, in chroot mode",
                 Has("escaped")),
            Demo(("run", "--", "python3", "-c", ESCAPE), "the same escape under pivot_root", Has("stayed inside")),
        ),
        (Code("isolate.plan.steps", "Chroot", "PivotRoot"),),
    ),
    Lab(
        2,
        "pivot_root and the new root",
        """\
The sandbox's root is an overlay (lower: the image, upper: a tmpfs that lives only in the
sandbox's mount namespace).  isolate mounts /proc, /sys, /dev and /tmp below it, then runs
`pivot_root . .` and detaches the old root.  --dry-run prints those steps.""",
        (
            Demo(("run", "--dry-run", "--", "true"), "the plan: overlay, mounts, pivot_root",
                 Has("mount -t overlay", "pivot_root . .")),
            Demo(("run", "--", "sh", "-c", "head -1 /proc/self/mountinfo; ls /"), "the root as seen inside",
                 Has("overlay", "usr")),
        ),
        (
            Code("isolate.plan.builder", "build_plan"),
            Code("isolate.plan.overlay", "overlay_steps"),
            Code("isolate.plan.mounts", "proc_steps", "sys_steps", "dev_steps", "tmp_steps"),
            Code("isolate.plan.steps", "PivotRoot"),
        ),
    ),
    Lab(
        3,
        "the pid namespace and PID 1",
        """\
clone(2) with CLONE_NEWPID makes the child PID 1 of a new pid namespace: it sees only its own
descendants, and orphans are re-parented to it.  A PID 1 ignores signals it has no handler
for; --init puts a small init in front that reaps and relays signals (the command is PID 2).""",
        (
            Demo(("run", "--", "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"), "the command is PID 1",
                 FirstLine("1")),
            Demo(("run", "--init", "--", "sh", "-c", "echo $$"), "with --init it is PID 2", FirstLine("2")),
        ),
        (
            Code("isolate.plan.builder", "clone_flags"),
            Code("isolate.process.spawn", "begin"),
            Code("isolate.process.init", "become_init"),
        ),
    ),
    Lab(
        4,
        "the mount namespace and propagation",
        """\
A new mount namespace starts as a copy of the host's.  Mounts made in it reach the host only
through shared propagation, so isolate first makes everything private (`mount
--make-rprivate /`).  Inside, the mount table is the sandbox's own.""",
        (
            Demo(("run", "--", "sh", "-c", "findmnt -n -o PROPAGATION /"), "propagation of the root", Has("private")),
        ),
        (Code("isolate.plan.steps", "MakeMountsPrivate"),),
    ),
    Lab(
        5,
        "uts and ipc namespaces",
        """\
The UTS namespace gives the sandbox its own hostname; the IPC namespace its own System V IPC
objects and POSIX message queues (/dev/mqueue).""",
        (
            Demo(("run", "--hostname", "lab", "--", "sh", "-c", "hostname; readlink /proc/self/ns/ipc"),
                 "a hostname and an ipc namespace of its own", HostnameAndOwnIpc("lab")),
        ),
        (Code("isolate.plan.builder", "clone_flags"), Code("isolate.plan.steps", "SetHostname")),
    ),
    Lab(
        6,
        "overlayfs: copy-up and whiteouts",
        """\
Writes go to the upper layer: a new file appears there; changing a lower file copies it up
first; deleting one leaves a whiteout (a 0/0 character device).  --keep keeps the upper layer.""",
        (
            Demo(("image", "build-busybox", "lab-busybox"), "a busybox image (no network)", Has("lab-busybox")),
            Demo(("run", "--keep", *BUSYBOX, "--", "sh", "-c", "echo new > /new; rm /etc/group; echo x >> /etc/passwd"),
                 "write, delete and change, keeping the upper layer",
                 UpperLayerKept(new="new", deleted="etc/group", changed="etc/passwd")),
        ),
        (Code("isolate.plan.overlay", "overlay_steps"),),
    ),
    Lab(
        7,
        "image layers",
        """\
An image is layers, each unpacked once into the store and used as an overlay lower layer.""",
        (
            Demo(("image", "build-busybox", "lab-busybox"), "a busybox image", Has("lab-busybox")),
            Demo(("image", "inspect", "lab-busybox"), "its layers on disk", Has("layer_dirs", "diff_ids")),
            Demo(("run", *BUSYBOX, "--", "sh", "-c", "echo from busybox"), "a run on it", Has("from busybox")),
        ),
        (Code("isolate.images.store", "ImageStore"), Code("isolate.images.unpack", "unpack_layer")),
    ),
    Lab(
        8,
        "memory limit and the OOM killer",
        """\
The memory controller charges every page the sandbox uses; past the limit the kernel's OOM
killer ends a process and counts it (memory.events oom_kill on v2, memory.oom_control on v1).""",
        (
            Demo(("run", "--json", "--memory", "32M", "--memory-swap", "32M", "--", "python3", "-c",
                  "bytearray(128<<20)"),
                 "a 128 MiB allocation under a 32 MiB limit", StatusIs("oom-killed")),
        ),
        CGROUPS,
    ),
    Lab(
        9,
        "CPU bandwidth: cpu.max throttling",
        """\
--cpus 0.2 sets a quota of 20 ms per 100 ms period (cpu.max on v2, cfs_quota_us on v1): a
spinner gets 0.2 s of CPU per second and is throttled the rest of the time.""",
        (
            Demo(("run", "--json", "--cpus", "0.2", "--wall-time", "1s", "--", "sh", "-c", "while :; do :; done"),
                 "a CPU spinner for one second", CpuThrottled(0.1, 0.4)),
        ),
        CGROUPS,
    ),
    Lab(
        10,
        "pids.max against a fork bomb",
        """\
The pids controller caps the number of processes; a fork bomb hits the limit instead of the
host's process table.""",
        (
            Demo(("run", "--json", "--pids", "16", "--wall-time", "2s", "--", "sh", "-c", "while :; do sleep 5 & done"),
                 "a fork bomb under --pids 16", PidsLimitHit()),
        ),
        CGROUPS,
    ),
    Lab(
        11,
        "cgroup v1 and v2 side by side",
        """\
v1: one hierarchy per controller (memory.limit_in_bytes, cpu.cfs_quota_us, ...); v2: one
unified tree (memory.max, cpu.max, ...), controllers handed down by cgroup.subtree_control.
The same --memory becomes a different file: --dry-run shows which, and what it means.""",
        (
            Demo(("doctor",), "this host's layout", Has("cgroups")),
            Demo(("run", "--dry-run", "--memory", "64M", "--", "true"), "the file --memory writes here",
                 Has("67108864 > /sys/fs/cgroup/")),
        ),
        (Code("isolate.cgroups", "layout"), *CGROUPS, Code("isolate.plan.explain", "cgroup_lines")),
    ),
    Lab(
        12,
        "capabilities and seccomp",
        """\
Root in a sandbox keeps only a few capabilities (no CAP_SYS_ADMIN: no mount) and a seccomp
filter refuses dangerous syscalls; --privileged turns both off (unsafe).""",
        (
            Demo(("run", "--", "sh", "-c", "grep -E 'CapEff|Seccomp:' /proc/self/status; mount -t tmpfs x /mnt && "
                  "echo mounted || echo mount refused"),
                 "root inside, defended", Has("Seccomp:\t2", "mount refused")),
            Demo(("run", "--privileged", "--", "sh", "-c", "mount -t tmpfs x /mnt && echo mounted"),
                 "the same, privileged (the mount stays in the sandbox's namespace)", Has("mounted")),
        ),
        (
            Code("isolate.plan.security", "DEFAULT_CAPS", "DropCapabilities"),
            Code("isolate.plan.seccomp", "DENIED", "LoadSeccomp"),
        ),
    ),
    Lab(
        13,
        "user namespaces",
        """\
In a user namespace root inside is an ordinary id outside (uid_map); what it creates on a
volume belongs to that id, and the host root's files are out of its reach.  An ordinary user
running isolate always gets one (rootless).""",
        (
            Demo(("run", "--userns", "--", "sh", "-c", "id -u; cat /proc/self/uid_map"), "root inside, mapped",
                 Has("0 ", "65536")),
        ),
        (Code("isolate.plan.builder", "id_maps"), Code("isolate.process.spawn", "begin")),
    ),
    Lab(
        14,
        "network namespaces and a veth pair",
        """\
Each sandbox has its own network namespace: only lo, no route out.  A veth pair is two
interfaces joined back to back; with one end in each sandbox (moved there by netlink) and
the two addresses of a /30, the two sandboxes reach each other and nothing else.""",
        (
            Demo(("rm", "-f", "lab-a", "lab-b"), "start clean (errors are fine here)", AnyOutput()),
            Demo(("image", "build-busybox", "lab-busybox"), "a busybox image (it has ping)", Has("lab-busybox")),
            Demo(("run", "-d", "--name", "lab-a", *BUSYBOX, "--", "sleep", "60"), "sandbox a", AnyOutput()),
            Demo(("run", "-d", "--name", "lab-b", *BUSYBOX, "--", "sleep", "60"), "sandbox b", AnyOutput()),
            Demo(("exec", "lab-a", "ip", "-o", "link"), "before: a has only lo", Has("lo")),
            Demo(("net", "connect", "lab-a", "lab-b"), "a veth pair between them", Has("lab-a 10.213.0.1")),
            Demo(("exec", "lab-a", "ping", "-c", "1", "-W", "2", "10.213.0.2"), "a reaches b",
                 Has("1 packets received")),
            Demo(("rm", "-f", "lab-a", "lab-b"), "remove both (their ends of the pair go with them)", AnyOutput()),
        ),
        (Code("isolate.detached.network", "connect"), Code("isolate.plan.steps", "LoopbackUp")),
    ),
    Lab(
        15,
        "crashes, leftovers and isolate gc",
        """\
A supervisor killed with SIGKILL cannot clean up: its sandbox's cgroup, lock file and record
stay behind.  What is left is told from what is alive by a lock: each sandbox's supervisor
holds an flock(2) on <state_dir>/locks/<id> from before its cgroup exists until after it is
removed, and the kernel drops the lock when its holder dies, however it dies.  isolate gc
removes a cgroup only when that lock file is in its own state directory and it can take the
lock: another user's sandboxes, running or dead, are never its to touch.  ISOLATE_FAULT makes
isolate fail or die at a named point, as its reliability tests do; this lab uses a state
directory of its own.""",
        (
            Demo(("rm", "-f", "lab-crash"), "start clean (errors are fine here)", AnyOutput(), LAB15),
            Demo(("run", "-d", "--name", "lab-crash", "--memory", "32M", "--", "true"),
                 "its monitor is killed once the sandbox ended, before it cleans up", AnyOutput(),
                 (*LAB15, ("ISOLATE_FAULT", "supervisor:finish=kill"))),
            Demo(("wait", "lab-crash"), "wait for the end (the monitor is gone)", AnyOutput(), LAB15),
            Demo(("ps", "-a"), "nobody recorded the exit: dead", Has("lab-crash", "dead"), LAB15),
            Demo(("gc",), "the lock is free: gc removes the cgroup, the lock and the record",
                 Has("removed cgroup", "(lab-crash, dead)"), LAB15),
            Demo(("ps", "-a"), "nothing left", Lacks("lab-crash"), LAB15),
        ),
        (Code("isolate.detached.gc", "collect", "collect_sandbox"),
         Code("isolate.faults", "point", "POINTS")),
    ),
)  # fmt: skip
