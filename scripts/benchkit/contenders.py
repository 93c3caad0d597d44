"""The start-latency contenders: baselines, peers (bwrap, crun, runc) and isolate (CLI, library)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from benchkit.context import Context
from benchkit.host import first_line
from benchkit.limits import ISOLATE_LIMIT_FLAGS
from benchkit.oci import oci_config
from benchkit.timing import devnull_actions, timed_spawn
from benchkit.workers import CRUN_WRAPPER, Worker, crun_worker_argv, lib_worker_argv

# name -> (group, description); the table keeps this order.
CONTENDERS = {
    "true": ("baseline", "/bin/true on the host"),
    "unshare": ("baseline", "unshare -fpmiun chroot ROOT /bin/true"),
    "bwrap": ("peer", "bwrap --unshare-all ... --ro-bind ROOT /"),
    "crun": ("peer", "crun run (runc spec defaults, limits)"),
    "runc": ("peer", "runc run (runc spec defaults, limits)"),
    "isolate-cli": ("isolate", "isolate run --rootfs ROOT, limits"),
    "isolate-lib": ("isolate", "Sandbox.run(), small caller, limits"),
    "isolate-lib-nolimit": ("isolate", "Sandbox.run(), small caller, no limits"),
    "isolate-lib-256M": ("isolate", "Sandbox.run(), 256 MiB caller, limits"),
    "isolate-lib-256M-direct": ("isolate", "same, spawn=direct"),
    "isolate-lib-warm": ("isolate", "Sandbox.run(), small caller, limits, prestart"),
}


class Contender:
    uses_cgroups = False

    def __init__(self, name: str, runs: int) -> None:
        self.name = name
        self.group, self.desc = CONTENDERS[name]
        self.runs = runs
        self.samples: list[float] = []
        self.after: list[str] = []  # the contender that ran just before each sample
        self.error: str | None = None
        self.info: dict[str, Any] = {}

    def setup(self, ctx: Context) -> None:
        pass

    def once(self, i: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def check(self, rc: int | None, what: str = "") -> None:
        if rc != 0:
            why = "hung" if rc is None else f"exit status {rc}"
            raise RuntimeError(f"{self.name}: {what or 'run'} failed ({why})")


class Command(Contender):
    """An external command started from the driver."""

    def __init__(self, name: str, runs: int, argv: list[str]) -> None:
        super().__init__(name, runs)
        self.argv = argv

    def setup(self, ctx: Context) -> None:
        self.log = os.path.join(ctx.tmp, f"{self.name}.log")
        self.errfd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.actions = devnull_actions(self.errfd)
        self.env = dict(os.environ)
        self.path = self.argv[0]
        self.info["argv"] = self.argv

    def once(self, i: int) -> float:
        ms, rc = timed_spawn(self.path, self.argv, self.env, self.actions)
        self.check(rc)
        return ms

    def close(self) -> None:
        os.close(self.errfd)


class Oci(Command):
    """runc or crun on a bundle whose config.json is rewritten (outside the timed window) per run."""

    uses_cgroups = True

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.runtime = self.argv[0]
        self.bundle = os.path.join(ctx.tmp, f"{self.name}-bundle")
        self.state = os.path.join(ctx.tmp, f"{self.name}-state")
        os.makedirs(self.bundle)
        os.makedirs(self.state)
        super().setup(ctx)
        self.info["version"] = first_line([self.runtime, "--version"])
        self.info["config"] = oci_config(ctx.rootfs, f"/{ctx.cgroup_parent}/CONTAINER-ID")

    def cid(self, i: int) -> str:
        return f"{self.ctx.cgroup_parent}-{self.name}-{i}"

    def prepare(self, i: int) -> str:
        cid = self.cid(i)
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(oci_config(self.ctx.rootfs, f"/{self.ctx.cgroup_parent}/{cid}"), f)
        return cid

    def once(self, i: int) -> float:
        cid = self.prepare(i)
        argv = [self.runtime, "--root", self.state, "run", "--bundle", self.bundle, cid]
        ms, rc = timed_spawn(self.runtime, argv, self.env, self.actions)
        if rc is None:
            subprocess.run([self.runtime, "--root", self.state, "delete", "--force", cid], stdout=subprocess.DEVNULL)
        self.check(rc, f"{self.runtime} run {cid}")
        return ms

    def close(self) -> None:
        leftover = sorted(os.listdir(self.state))
        for cid in leftover:
            subprocess.run([self.runtime, "--root", self.state, "delete", "--force", cid], stdout=subprocess.DEVNULL)
        self.info["leftover_containers"] = leftover
        super().close()


class Crun(Oci):
    """crun, driven through a worker that may live in a private mount namespace (hybrid cgroups)."""

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if ctx.cgroups == "hybrid":
            self.info["wrapper"] = CRUN_WRAPPER
        self.worker = Worker(crun_worker_argv(ctx, self.runtime, self.state, self.bundle), self.log)

    def once(self, i: int) -> float:
        cid = self.prepare(i)
        reply = self.worker.request(f"run {cid}")
        self.check(reply.get("rc"), f"crun run {cid}")
        return float(reply["ms"])

    def close(self) -> None:
        reply = self.worker.close("done") or {}
        self.info["leftover_containers"] = reply.get("leftover", [])
        os.close(self.errfd)


class Library(Contender):
    uses_cgroups = True

    def __init__(
        self, name: str, runs: int, mem_mib: int, spawn: str, limits: bool = True, prestart: bool = False
    ) -> None:
        super().__init__(name, runs)
        self.mem_mib, self.spawn, self.limits, self.prestart = mem_mib, spawn, limits, prestart

    def setup(self, ctx: Context) -> None:
        self.log = os.path.join(ctx.tmp, f"{self.name}.log")
        self.worker = Worker(lib_worker_argv(ctx, self.mem_mib, self.spawn, self.limits, self.prestart), self.log)
        self.info.update(self.worker.hello)
        self.info.pop("ready", None)
        self.info["spawn"] = self.spawn
        self.info["limits"] = self.limits
        self.info["prestart"] = self.prestart

    def once(self, i: int) -> float:
        reply = self.worker.request("run")
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        self.check(reply.get("rc"))
        self.info["engine"] = reply.get("engine")
        return float(reply["ms"])

    def close(self) -> None:
        self.worker.close()


class IsolateCli(Command):
    uses_cgroups = True


def make_contenders(ctx: Context, selected: list[str], runs: int, runc_runs: int) -> list[Contender]:
    root = ctx.rootfs
    w = ctx.which
    made: dict[str, Contender] = {
        "true": Command("true", runs, ["/bin/true"]),
        "unshare": Command("unshare", runs, [w.get("unshare", ""), "-fpmiun", "chroot", root, "/bin/true"]),
        "bwrap": Command(
            "bwrap",
            runs,
            [
                w.get("bwrap", ""),
                "--unshare-all",
                "--die-with-parent",
                "--ro-bind",
                root,
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "/bin/true",
            ],
        ),
        "crun": Crun("crun", runs, [w.get("crun", "")]),
        "runc": Oci("runc", runc_runs, [w.get("runc", "")]),
        "isolate-cli": IsolateCli(
            "isolate-cli",
            runs,
            [
                ctx.isolate_bin,
                "run",
                "--rootfs",
                root,
                "--cgroup-parent",
                ctx.cgroup_parent,
                *ISOLATE_LIMIT_FLAGS,
                "--",
                "/bin/true",
            ],
        ),
        "isolate-lib": Library("isolate-lib", runs, 0, "auto"),
        "isolate-lib-nolimit": Library("isolate-lib-nolimit", runs, 0, "auto", limits=False),
        "isolate-lib-256M": Library("isolate-lib-256M", runs, 256, "auto"),
        "isolate-lib-256M-direct": Library("isolate-lib-256M-direct", runs, 256, "direct"),
        "isolate-lib-warm": Library("isolate-lib-warm", runs, 0, "auto", prestart=True),
    }
    return [made[n] for n in selected]
