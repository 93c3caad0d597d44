"""The detached section: many idle `sleep 3600` sandboxes: start latency, host memory each, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from benchkit.context import Context
from benchkit.host import memcg_count, memcg_usage, meminfo, read_int, tree_pids
from benchkit.limits import ISOLATE_LIMIT_FLAGS, MIB
from benchkit.oci import oci_config
from benchkit.procs import ppid_of, pss_of, wait_gone
from benchkit.timing import RUN_TIMEOUT, RunTimeout, devnull_actions, stats, timed_spawn
from benchkit.workers import CrunSession, Worker, checked, lib_worker_argv


def footprint(ctx: Context, exclude: set[int]) -> dict[str, Any]:
    """Host memory in use, and the processes of the sandboxes (in ctx's cgroups) with their parents
    other than this benchmark's own processes (isolate's monitor), with their summed PSS."""
    mi = meminfo()
    pids = tree_pids(ctx.cgroup_parent)
    parents = {p for p in (ppid_of(pid) for pid in pids) if p is not None} - pids - exclude - {1}
    return {
        "used": mi["MemTotal"] - mi["MemAvailable"],
        "pss": sum(pss_of(p) for p in pids | parents),
        "procs": len(pids),
        "helpers": sorted(parents),
        "memcg": memcg_usage(ctx.cgroup_parent),
        "memcgs": memcg_count(),
    }


class Detached:
    """One kind of detached sandbox: start n, measure the host's memory, tear them down."""

    def __init__(self, name: str, desc: str, n: int) -> None:
        self.name, self.desc, self.n = name, desc, n
        self.exclude: set[int] = {os.getpid()}

    def open(self, ctx: Context) -> None:
        pass

    def start(self, i: int) -> tuple[float, str, int | None]:
        raise NotImplementedError

    def stop(self, sid: str, pid: int | None) -> float:
        raise NotImplementedError

    def close(self) -> list[str]:
        return []

    def while_running(self, starts: list[float]) -> dict[str, Any]:
        """Figures taken while all n sandboxes run, given their start times (none by default)."""
        return {}

    def measure(self, ctx: Context, settle: float) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.desc, "n": self.n}
        started: list[tuple[str, int | None]] = []
        starts: list[float] = []
        stops: list[float] = []
        helpers: list[int] = []
        try:
            self.open(ctx)
            time.sleep(settle)
            before = footprint(ctx, self.exclude)
            t0 = time.monotonic()
            for i in range(self.n):
                ms, sid, pid = self.start(i)
                starts.append(ms)
                started.append((sid, pid))
            out["start_total_s"] = time.monotonic() - t0
            time.sleep(settle)
            after = footprint(ctx, self.exclude)
            helpers = after["helpers"]
            out.update(self.while_running(starts))
            n = len(started)
            out["memory"] = {
                "host_used_before_mib": before["used"] / MIB,
                "host_used_after_mib": after["used"] / MIB,
                "host_per_sandbox_mib": (after["used"] - before["used"]) / MIB / n,
                "pss_total_mib": after["pss"] / MIB,
                "pss_per_sandbox_mib": after["pss"] / MIB / n,
                "processes": after["procs"],
                "helper_processes": len(helpers),
                "memcg_per_sandbox_mib": (after["memcg"] - (before["memcg"] or 0)) / MIB / n
                if after["memcg"] is not None
                else None,
                "memcgs_in_kernel_before": before["memcgs"],
                "memcgs_in_kernel_after": after["memcgs"],
            }
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
            print(f"  {self.name}: {e}", file=sys.stderr, flush=True)
        finally:
            t0 = time.monotonic()
            for sid, pid in started:
                try:
                    stops.append(self.stop(sid, pid))
                except (RuntimeError, OSError) as e:
                    out.setdefault("teardown_errors", []).append(f"{sid}: {e}")
            out["teardown_total_s"] = time.monotonic() - t0
            left = self.close()
            if left:
                out["leftover"] = left
            gone = wait_gone(helpers)  # isolate's monitor exits once idle
            if gone:
                out["helpers_still_running"] = gone
            out["memcgs_in_kernel_end"] = memcg_count()
        out["start"] = stats(starts)
        out["teardown"] = stats(stops)
        out["teardown_per_sandbox_ms"] = out["teardown_total_s"] * 1e3 / len(stops) if stops else None
        out["start_samples_ms"] = starts
        out["teardown_samples_ms"] = stops
        return out


class DetachedLib(Detached):
    def open(self, ctx: Context) -> None:
        self.worker = Worker(lib_worker_argv(ctx, limits=True), os.path.join(ctx.tmp, f"{self.name}.log"))
        self.exclude.add(self.worker.proc.pid)

    def start(self, i: int) -> tuple[float, str, int | None]:
        r = checked(self.worker.request("start"), f"{self.name}: start_detached #{i}")
        return float(r["ms"]), str(r["id"]), r.get("pid")

    def stop(self, sid: str, pid: int | None) -> float:
        return float(checked(self.worker.request(f"stop {sid}"), f"{self.name}: remove {sid}")["ms"])

    def close(self) -> list[str]:
        if hasattr(self, "worker"):
            self.worker.close()
        return []


class DetachedCli(Detached):
    def open(self, ctx: Context) -> None:
        self.ctx = ctx
        self.errfd = os.open(os.path.join(ctx.tmp, f"{self.name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.outfd = os.open(os.path.join(ctx.tmp, f"{self.name}.out"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.actions = [
            (os.POSIX_SPAWN_DUP2, null, 0),
            (os.POSIX_SPAWN_DUP2, self.outfd, 1),
            (os.POSIX_SPAWN_DUP2, self.errfd, 2),
        ]
        self.env = dict(os.environ)
        self.env.setdefault("ISOLATE_STATE_DIR", ctx.state_dir)
        self.other_state = os.path.join(ctx.tmp, "other-state")
        self.argv = [
            ctx.isolate_bin,
            "run",
            "-d",
            "--rootfs",
            ctx.rootfs,
            "--cgroup-parent",
            ctx.cgroup_parent,
            *ISOLATE_LIMIT_FLAGS,
            "--",
            "sleep",
            "3600",
        ]

    def start(self, i: int) -> tuple[float, str, int | None]:
        os.ftruncate(self.outfd, 0)
        os.lseek(self.outfd, 0, os.SEEK_SET)
        ms, rc = timed_spawn(self.argv[0], self.argv, self.env, self.actions)
        sid = os.pread(self.outfd, 200, 0).decode().strip()
        if rc != 0 or not sid:
            raise RuntimeError(f"isolate run -d #{i} failed (status {rc}); see {self.name}.log")
        return ms, sid, None

    def while_running(self, starts: list[float]) -> dict[str, Any]:
        """isolate gc with every sandbox alive: its own state directory's, then another's (a second
        user of isolate on the host); each must remove nothing (issue #17: it once took them all)."""
        gc: dict[str, Any] = {"removed": 0}
        for key, state_dir in (("own_ms", self.env["ISOLATE_STATE_DIR"]), ("other_ms", self.other_state)):
            argv = [self.argv[0], "gc", "--cgroup-parent", self.ctx.cgroup_parent]
            os.ftruncate(self.outfd, 0)
            os.lseek(self.outfd, 0, os.SEEK_SET)
            ms, rc = timed_spawn(argv[0], argv, {**self.env, "ISOLATE_STATE_DIR": state_dir}, self.actions)
            if rc != 0:
                raise RuntimeError(f"isolate gc ({key}): status {rc}; see {self.name}.log")
            gc[key] = ms
            gc["removed"] += len(os.pread(self.outfd, 1 << 16, 0).splitlines())
        gc["own_per_sandbox_ms"] = gc["own_ms"] / len(starts) if starts else None
        return {"gc": gc}

    def stop(self, sid: str, pid: int | None) -> float:
        argv = [self.argv[0], "rm", "-f", sid]
        ms, rc = timed_spawn(argv[0], argv, self.env, self.actions)
        if rc != 0:
            raise RuntimeError(f"isolate rm -f {sid}: status {rc}")
        return ms

    def close(self) -> list[str]:
        for fd in ("outfd", "errfd"):
            if hasattr(self, fd):
                os.close(getattr(self, fd))
        return []


class DetachedOci(Detached):
    """crun (through its worker, in the private mount namespace) or runc (from here)."""

    def __init__(self, name: str, desc: str, n: int, runtime: str) -> None:
        super().__init__(name, desc, n)
        self.runtime = runtime

    def bundle(self, i: int) -> tuple[str, str]:
        cid = f"{self.ctx.cgroup_parent}-{self.tag}-{i}"
        where = os.path.join(self.bundles, str(i))
        os.mkdir(where)
        with open(os.path.join(where, "config.json"), "w") as f:
            json.dump(oci_config(self.ctx.rootfs, f"/{self.ctx.cgroup_parent}/{cid}", ["sleep", "3600"]), f)
        return cid, where

    def open(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tag = f"detached-{self.name}"  # apart from the start-latency contender's files
        self.bundles = os.path.join(ctx.tmp, f"{self.tag}-bundles")
        os.makedirs(self.bundles)
        self.path = ctx.which[self.runtime]
        if self.runtime == "crun":
            self.session = CrunSession(ctx, self.tag, oci_config(ctx.rootfs, f"/{ctx.cgroup_parent}/unused"))
            self.exclude.add(self.session.worker.proc.pid)
        else:
            self.errfd = os.open(
                os.path.join(ctx.tmp, f"{self.tag}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
            self.state = os.path.join(ctx.tmp, f"{self.tag}-state")
            os.makedirs(self.state)
            self.actions = devnull_actions(self.errfd)
            self.env = dict(os.environ)

    def start(self, i: int) -> tuple[float, str, int | None]:
        cid, where = self.bundle(i)
        if self.runtime == "crun":
            r = checked(self.session.worker.request(f"start {cid} {where}"), f"crun run -d {cid}")
            return float(r["ms"]), cid, int(r["pid"])
        pid_file = os.path.join(where, "pid")
        argv = [self.path, "--root", self.state, "run", "-d", "--bundle", where, "--pid-file", pid_file, cid]
        ms, rc = timed_spawn(self.path, argv, self.env, self.actions)
        if rc != 0:
            raise RuntimeError(f"runc run -d {cid}: {'hung' if rc is None else f'status {rc}'}")
        with open(pid_file) as f:
            return ms, cid, int(f.read().strip())

    def stop(self, sid: str, pid: int | None) -> float:
        if self.runtime == "crun":
            return float(checked(self.session.worker.request(f"stop {sid} {pid}"), f"crun kill+delete {sid}")["ms"])
        assert pid is not None
        signal.alarm(RUN_TIMEOUT)
        try:
            t0 = time.perf_counter()
            kill = os.posix_spawn(
                self.path, [self.path, "--root", self.state, "kill", sid, "KILL"], self.env, file_actions=self.actions
            )
            rc = os.waitstatus_to_exitcode(os.waitpid(kill, 0)[1])
            wait_gone([pid], timeout=RUN_TIMEOUT)  # our child: runc run -d exited, we are a subreaper
            delete = os.posix_spawn(
                self.path, [self.path, "--root", self.state, "delete", sid], self.env, file_actions=self.actions
            )
            rc = rc or os.waitstatus_to_exitcode(os.waitpid(delete, 0)[1])
            t1 = time.perf_counter()
        except RunTimeout:
            raise RuntimeError(f"runc kill+delete {sid} hung") from None
        finally:
            signal.alarm(0)
        if rc != 0:
            raise RuntimeError(f"runc kill+delete {sid}: status {rc}")
        return (t1 - t0) * 1e3

    def close(self) -> list[str]:
        if self.runtime == "crun":
            return self.session.close() if hasattr(self, "session") else []
        if hasattr(self, "errfd"):
            os.close(self.errfd)
        if not hasattr(self, "state"):
            return []
        leftover = sorted(os.listdir(self.state))
        for cid in leftover:
            subprocess.run([self.path, "--root", self.state, "delete", "--force", cid], stdout=subprocess.DEVNULL)
        return leftover


def detached_room(n: int, per_sandbox_pids: int) -> tuple[int, str]:
    """n, or less when pid_max or the available memory cannot hold n more sandboxes (with a margin)."""
    pid_max = read_int("/proc/sys/kernel/pid_max") or 32768
    procs = sum(1 for e in os.listdir("/proc") if e.isdigit())
    by_pids = (pid_max - procs - 2000) // per_sandbox_pids
    by_mem = (meminfo()["MemAvailable"] - 1024 * MIB) // (8 * MIB)
    room = max(0, min(by_pids, by_mem))
    if n <= room:
        return n, ""
    return room, f"capped from {n} to {room} (pid_max {pid_max}, {procs} processes, MemAvailable)"


def run_detached(ctx: Context, n: int, n_cli: int, n_runc: int, settle: float) -> dict[str, Any]:
    """One kind after the other, each set torn down before the next starts: crun first (isolate's
    lingering memory cgroups do not burden it), then the isolate library, the CLI and runc."""
    kinds: list[Detached] = []
    if n:
        kinds.append(DetachedOci("crun", "crun run -d (limits), kill KILL + wait + delete", n, "crun"))
        kinds.append(DetachedLib("isolate-lib", "lifecycle.start_detached (limits), remove(force=True)", n))
    if n_cli:
        kinds.append(DetachedCli("isolate-cli", "isolate run -d (limits, init), isolate rm -f", n_cli))
    if n_runc:
        kinds.append(DetachedOci("runc", "runc run -d (limits), kill KILL + wait + delete", n_runc, "runc"))
    out: dict[str, Any] = {}
    for kind in kinds:
        kind.n, note = detached_room(kind.n, 3)
        if note:
            print(f"  {kind.name}: {note}", file=sys.stderr)
        if not kind.n:
            out[kind.name] = {"what": kind.desc, "n": 0, "error": note}
            continue
        print(f"  {kind.name}: starting {kind.n} `sleep 3600` sandboxes", file=sys.stderr, flush=True)
        try:
            out[kind.name] = kind.measure(ctx, settle)
        except (RuntimeError, OSError, ValueError, AttributeError, KeyError) as e:
            out[kind.name] = {"what": kind.desc, "n": kind.n, "error": f"{type(e).__name__}: {e}"}
            print(f"  {kind.name}: {e}", file=sys.stderr, flush=True)
        if note:
            out[kind.name]["capped"] = note
    crun = out.get("crun", {})
    for row in out.values():
        for key in ("start", "teardown"):
            mine, ref = row.get(key, {}).get("median"), crun.get(key, {}).get("median")
            row[f"{key}_ratio_to_crun"] = mine / ref if mine and ref else None
    gc, crun_teardown = out.get("isolate-cli", {}).get("gc"), crun.get("teardown", {}).get("median")
    if gc and gc.get("own_per_sandbox_ms") and crun_teardown:
        gc["per_sandbox_ratio_to_crun_teardown"] = gc["own_per_sandbox_ms"] / crun_teardown
    return out
