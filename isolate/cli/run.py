"""``isolate run``: options to a Sandbox, the result to an exit status, JSON and a file."""

from __future__ import annotations

import os
import sys

from isolate.config import DEFAULT_CGROUP_PARENT as DEFAULT_PARENT
from isolate.errors import ConfigError, IsolateError
from isolate.result import RunResult, meta_lines


def parse_duration(text: str) -> float:
    """Seconds from ``5``, ``2.5s``, ``500ms``, ``1m`` or ``1h``."""
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    number, scale = text.strip(), 1.0
    for suffix, factor in units:
        if number.endswith(suffix):
            number, scale = number[: -len(suffix)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise ConfigError(f"{text!r}: not a duration; use seconds (5, 2.5s), ms, m or h") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{text!r}: a duration must be a positive number")
    return value


def execute_run(opts: dict[str, object], command: list[str]) -> int:
    """Run and report; returns the exit status for the shell (docker's conventions)."""
    from isolate import Sandbox
    from isolate.config import parse_env
    from isolate.limits import Limits

    def text(name: str) -> str | None:
        value = opts.get(name)
        return value if isinstance(value, str) else None

    def many(name: str) -> list[str]:
        value = opts.get(name)
        return list(value) if isinstance(value, (list, tuple)) else []

    result: RunResult
    try:
        if not command and not text("image"):
            raise ConfigError("no command given: isolate run [OPTIONS] -- CMD [ARGS...]")
        share = [ns.strip() for item in many("share") for ns in item.split(",") if ns.strip()]
        wall, cpu_time = text("wall_time"), text("time")
        limits = Limits(
            memory=text("memory"),
            memory_swap=text("memory_swap"),
            cpus=text("cpus"),
            cpu_weight=text("cpu_weight"),
            cpuset=text("cpuset"),
            pids=text("pids"),
            io_weight=text("io_weight"),
            time=parse_duration(cpu_time) if cpu_time else None,
            wall_time=parse_duration(wall) if wall else None,
        )
        sandbox = Sandbox(
            text("rootfs"),
            layers=many("layer"),
            volumes=many("volume"),
            tmpfs=many("tmpfs"),
            read_only=bool(opts.get("read_only")),
            hostname=text("hostname"),
            env=parse_env(many("env")),
            workdir=text("workdir"),
            user=text("user"),
            net=text("net") or "none",
            share=share,
            mode=text("mode") or "pivot_root",
            keep=bool(opts.get("keep")),
            limits=limits,
            cgroups=False if opts.get("no_cgroup") else None,
            cgroup_parent=text("cgroup_parent") or DEFAULT_PARENT,
            image=text("image"),
            image_root=text("root"),
            cap_add=many("cap_add"),
            cap_drop=many("cap_drop"),
            privileged=bool(opts.get("privileged")),
            seccomp=text("seccomp") or "default",
            ulimits=many("ulimit"),
            oom_score_adj=_oom_score_adj(text("oom_score_adj")),
            userns=bool(opts.get("userns")),
            spawn="direct",
        )
        detach = bool(opts.get("detach"))
        sandbox.config.init = bool(opts.get("init")) or (detach and not opts.get("no_init"))
        if detach:
            from isolate.detached.lifecycle import start_detached

            if opts.get("tty"):
                raise ConfigError("-d with -t: a detached sandbox has no terminal; drop -t (isolate logs shows output)")
            print(start_detached(sandbox, command, text("name")))
            return 0
        if text("name"):
            raise ConfigError("--name names a detached sandbox: add -d")
        plan = sandbox.plan(command)
        if opts.get("explain") or opts.get("dry_run"):
            from isolate.plan.explain import explain

            print("\n".join(explain(plan)), file=sys.stderr if not opts.get("dry_run") else sys.stdout)
            if opts.get("dry_run"):
                return 0
        trace = os.environ.get("ISOLATE_TRACE")
        if trace:  # every step executed, as shell: what --explain is checked against
            plan.trace_fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            result = sandbox.run_plan(plan, forward_signals=True, tty=bool(opts.get("tty")))
        finally:
            if plan.trace_fd >= 0:
                os.close(plan.trace_fd)
    except IsolateError as exc:
        print(f"isolate: {exc}", file=sys.stderr)
        result = RunResult(status="isolate-error", exit_code=exc.exit_code, error=str(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a host-side failure nothing above named: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"isolate: {exc.strerror or exc}{where}", file=sys.stderr)
        result = RunResult(status="isolate-error", exit_code=125, error=str(exc))
    if result.upper_dir:
        print(f"isolate: upper layer kept at {result.upper_dir}", file=sys.stderr)
    if opts.get("json"):
        sys.stdout.flush()
        os.write(1, (result.to_json() + "\n").encode())
    for option in ("result_file", "meta"):
        path = text(option)
        if path:
            try:
                with open(path, "w") as f:
                    f.write(result.to_json() + "\n" if option == "result_file" else meta_lines(result))
            except OSError as exc:
                print(f"isolate: cannot write --{option.replace('_', '-')} {path}: {exc.strerror}", file=sys.stderr)
                return 125
    return result.exit_code


def _oom_score_adj(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 9999
    if not -1000 <= value <= 1000:
        raise ConfigError(f"--oom-score-adj {text!r}: choose a whole number from -1000 to 1000")
    return value
