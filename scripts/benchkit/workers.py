"""Worker subprocesses: re-executions of scripts/bench (`__lib-worker`, `__crun-worker`), driven line by
line over stdin/stdout.  The library is timed in them so that a caller's memory (256 MiB) never grows
the driver, and crun in them so that it can live in a private mount namespace."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any, Callable, TextIO

from benchkit.context import Context
from benchkit.limits import LIMIT_CPUS, LIMIT_MEMORY_MIB, LIMIT_PIDS, MIB
from benchkit.procs import reap_descendants, set_child_subreaper
from benchkit.timing import RUN_TIMEOUT, RunTimeout, devnull_actions, on_alarm, stats, timed_spawn

WORKER_TIMEOUT = 120


def proto_fds() -> tuple[TextIO, TextIO]:
    """The worker's request/reply streams; its fds 0 and 1 then point at /dev/null."""
    inp = open(os.dup(0))
    out = open(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return inp, out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")


def run_loop(begin: float, until: float, once: Callable[[int], tuple[float, bool]]) -> dict[str, Any]:
    """once(0), once(1) ... back to back from the time.monotonic() instant begin until the instant until
    (the last run ends after it); once times itself: (milliseconds, succeeded)."""
    time.sleep(max(0.0, begin - time.monotonic()))
    lat: list[float] = []
    bad = 0
    t_first = time.monotonic()
    while True:
        ms, ok = once(len(lat))
        lat.append(ms)
        bad += not ok
        t_last = time.monotonic()
        if t_last >= until:
            break
    return {"runs": len(lat), "elapsed": t_last - t_first, "late": t_first - begin, "failed": bad, **stats(lat)}


def lib_worker(argv: list[str]) -> int:
    """Requests: `run` (one timed Sandbox.run), `loop START END` (Sandbox.run back to back between two
    time.monotonic() instants), `start` (one timed lifecycle.start_detached of `sleep 3600`), `stop ID`
    (one timed lifecycle.remove(force=True)); anything else ends it, removing what `start` left."""
    ap = argparse.ArgumentParser(prog="bench __lib-worker")
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--mem-mib", type=int, default=0)
    ap.add_argument("--spawn", default="auto")
    ap.add_argument("--cgroup-parent", required=True)
    ap.add_argument("--limits", action="store_true", help="the same limits as crun's config.json")
    ap.add_argument("--no-prestart", action="store_true", help="every run starts cold (Sandbox(prestart=False))")
    args = ap.parse_args(argv)
    inp, out = proto_fds()
    ballast = None
    if args.mem_mib:
        ballast = bytearray(args.mem_mib * MIB)
        ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # write every page: resident
    import isolate
    from isolate import Sandbox
    from isolate import _state as state
    from isolate.detached import lifecycle
    from isolate.errors import IsolateError
    from isolate.limits import Limits

    null = os.open(os.devnull, os.O_RDWR)
    limits = Limits(memory=LIMIT_MEMORY_MIB * MIB, pids=LIMIT_PIDS, cpus=LIMIT_CPUS) if args.limits else None
    box = Sandbox(
        args.rootfs, spawn=args.spawn, cgroup_parent=args.cgroup_parent, limits=limits, prestart=not args.no_prestart
    )
    state_dir = box.config.state_dir
    out.write(
        json.dumps(
            {
                "ready": True,
                "rss_mib": round(rss_bytes() / MIB, 1),
                "isolate": isolate.__version__,
                "isolate_path": os.path.dirname(isolate.__file__),
                "state_dir": state_dir,
                "python": platform.python_version(),
                "executable": sys.executable,
            }
        )
        + "\n"
    )

    def engine() -> str:
        # The helper pool is made on the first run that needs it; not imported yet: none has.
        helper = sys.modules.get("isolate.process.helper")
        return "helper" if helper is not None and helper.current_pool() is not None else "direct"

    started: list[str] = []
    for line in inp:
        words = line.split()
        try:
            if words == ["run"]:
                t0 = time.perf_counter()
                res = box.run(["/bin/true"], stdin=null, stdout=null, stderr=2)
                t1 = time.perf_counter()
                out.write(json.dumps({"ms": (t1 - t0) * 1e3, "rc": res.exit_code, "engine": engine()}) + "\n")
            elif words[:1] == ["loop"]:

                def one_run(_i: int) -> tuple[float, bool]:
                    t0 = time.perf_counter()
                    res = box.run(["/bin/true"], stdin=null, stdout=null, stderr=2)
                    return (time.perf_counter() - t0) * 1e3, res.exit_code == 0

                row = run_loop(float(words[1]), float(words[2]), one_run)
                out.write(json.dumps({**row, "engine": engine()}) + "\n")
            elif words == ["start"]:
                t0 = time.perf_counter()
                sid = lifecycle.start_detached(box, ["sleep", "3600"])
                t1 = time.perf_counter()
                started.append(sid)
                record = state.read_record(state_dir, sid) or {}
                out.write(
                    json.dumps(
                        {"ms": (t1 - t0) * 1e3, "id": sid, "pid": record.get("pid"), "status": record.get("status")}
                    )
                    + "\n"
                )
            elif words[:1] == ["stop"]:
                t0 = time.perf_counter()
                lifecycle.remove(state_dir, words[1], force=True)
                t1 = time.perf_counter()
                started.remove(words[1])
                out.write(json.dumps({"ms": (t1 - t0) * 1e3, "rc": 0}) + "\n")
            else:
                break
        except IsolateError as e:
            out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
    for sid in started:  # interrupted: remove what is still running
        try:
            lifecycle.remove(state_dir, sid, force=True)
        except IsolateError:
            pass
    box.close()
    del ballast
    return 0


def crun_worker(argv: list[str]) -> int:
    """Requests: `run CID` (one timed `crun run`), `loop START END` (`crun run` back to back), `start CID
    BUNDLE` (one timed `crun run -d`), `stop CID PID` (timed `crun kill CID KILL`, wait, `crun delete`).
    This process is a subreaper: detached containers become its children when crun exits."""
    crun, state, bundle = argv
    signal.signal(signal.SIGALRM, on_alarm)
    set_child_subreaper()
    inp, out = proto_fds()
    env = dict(os.environ)
    actions = devnull_actions(2)

    def force_delete(cid: str) -> None:
        subprocess.run([crun, "--root", state, "delete", "--force", cid], stdout=subprocess.DEVNULL)

    out.write(json.dumps({"ready": True}) + "\n")
    for line in inp:
        words = line.split()
        if words[:1] == ["run"]:
            cid = words[1]
            ms, rc = timed_spawn(crun, [crun, "--root", state, "run", "--bundle", bundle, cid], env, actions)
            if rc is None:
                force_delete(cid)
            out.write(json.dumps({"ms": ms, "rc": rc}) + "\n")
        elif words[:1] == ["loop"]:
            prefix = words[3]

            def one_run(i: int, prefix: str = prefix) -> tuple[float, bool]:
                cid = f"{prefix}-{i}"
                ms, rc = timed_spawn(crun, [crun, "--root", state, "run", "--bundle", bundle, cid], env, actions)
                if rc is None:
                    force_delete(cid)
                return ms, rc == 0

            out.write(json.dumps(run_loop(float(words[1]), float(words[2]), one_run)) + "\n")
        elif words[:1] == ["start"]:
            cid, where = words[1], words[2]
            pid_file = os.path.join(where, "pid")
            ms, rc = timed_spawn(
                crun, [crun, "--root", state, "run", "-d", "--bundle", where, "--pid-file", pid_file, cid], env, actions
            )
            pid = None
            if rc == 0:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
            elif rc is None:
                force_delete(cid)
            out.write(json.dumps({"ms": ms, "rc": rc, "id": cid, "pid": pid}) + "\n")
        elif words[:1] == ["stop"]:
            cid, pid = words[1], int(words[2])
            signal.alarm(RUN_TIMEOUT)
            try:
                t0 = time.perf_counter()
                kill = os.posix_spawn(crun, [crun, "--root", state, "kill", cid, "KILL"], env, file_actions=actions)
                rc = os.waitstatus_to_exitcode(os.waitpid(kill, 0)[1])
                try:
                    os.waitpid(pid, 0)  # the container's process: our child since crun run -d exited
                except ChildProcessError:  # not reparented to us after all: poll until it is gone
                    while os.path.exists(f"/proc/{pid}"):
                        time.sleep(0.001)
                delete = os.posix_spawn(crun, [crun, "--root", state, "delete", cid], env, file_actions=actions)
                rc = rc or os.waitstatus_to_exitcode(os.waitpid(delete, 0)[1])
                t1 = time.perf_counter()
            except RunTimeout:
                force_delete(cid)
                t0, t1, rc = 0.0, RUN_TIMEOUT, None
            finally:
                signal.alarm(0)
            out.write(json.dumps({"ms": (t1 - t0) * 1e3, "rc": rc}) + "\n")
        else:
            break
    leftover = sorted(os.listdir(state)) if os.path.isdir(state) else []
    for cid in leftover:
        force_delete(cid)
    reap_descendants(grace=2.0)
    out.write(json.dumps({"leftover": leftover}) + "\n")
    return 0


class Worker:
    """A worker subprocess: one request line in, one JSON line out."""

    def __init__(self, argv: list[str], log: str) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        self.buf = b""
        self.hello = self.request(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def request(self, line: str | None) -> dict[str, Any]:
        """Send line (unless None) and return the next reply."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.send(line)
        signal.alarm(WORKER_TIMEOUT)
        try:
            while b"\n" not in self.buf:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"worker exited (status {self.proc.wait()}); see {self.log}:\n" + tail(self.log))
                self.buf += chunk
        except RunTimeout:
            raise RuntimeError(f"worker did not answer in {WORKER_TIMEOUT} s; see {self.log}") from None
        finally:
            signal.alarm(0)
        reply, self.buf = self.buf.split(b"\n", 1)
        doc: dict[str, Any] = json.loads(reply)
        return doc

    def close(self, last: str = "quit") -> dict[str, Any] | None:
        reply = None
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(last.encode() + b"\n")
                self.proc.stdin.close()
                if last != "quit":
                    reply = self.request(None)
            except (OSError, RuntimeError, ValueError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return reply


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def checked(reply: dict[str, Any], what: str) -> dict[str, Any]:
    if "error" in reply:
        raise RuntimeError(f"{what}: {reply['error']}")
    if reply.get("rc", 0) != 0:
        why = "hung" if reply.get("rc") is None else f"exit status {reply['rc']}"
        raise RuntimeError(f"{what}: failed ({why})")
    return reply


def lib_worker_argv(
    ctx: Context, mem_mib: int = 0, spawn: str = "auto", limits: bool = True, prestart: bool = True
) -> list[str]:
    return (
        [
            ctx.lib_python,
            ctx.script,
            "__lib-worker",
            "--rootfs",
            ctx.rootfs,
            "--mem-mib",
            str(mem_mib),
            "--spawn",
            spawn,
            "--cgroup-parent",
            ctx.cgroup_parent,
        ]
        + (["--limits"] if limits else [])
        + ([] if prestart else ["--no-prestart"])
    )


CRUN_WRAPPER = "unshare -m --propagation private + tmpfs over /sys/fs/cgroup/unified"


def crun_worker_argv(ctx: Context, runtime: str, state: str, bundle: str) -> list[str]:
    inner = [sys.executable, ctx.script, "__crun-worker", runtime, state, bundle]
    if ctx.cgroups != "hybrid":
        return inner
    # crun 1.8.1: "cgroups in hybrid mode not supported"; hide the cgroup2 mount from it.
    return [
        ctx.which["unshare"],
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs none /sys/fs/cgroup/unified && exec "$@"',
        "sh",
        *inner,
    ]


class CrunSession:
    """A crun worker with a bundle and state directory of its own (for the throughput and detached sections)."""

    def __init__(self, ctx: Context, name: str, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.runtime = ctx.which["crun"]
        self.bundle = os.path.join(ctx.tmp, f"{name}-bundle")
        self.state = os.path.join(ctx.tmp, f"{name}-state")
        os.makedirs(self.bundle)
        os.makedirs(self.state)
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(config, f)
        self.log = os.path.join(ctx.tmp, f"{name}.log")
        self.worker = Worker(crun_worker_argv(ctx, self.runtime, self.state, self.bundle), self.log)

    def close(self) -> list[str]:
        reply = self.worker.close("done") or {}
        return list(reply.get("leftover", []))
