"""The ``isolate-oci`` command: runc's command line, so engines can use isolate as their runtime.

Every error is one line on stderr and, with ``--log``, one log entry (a JSON object with
``--log-format json``, as containerd's shim reads it); the exit status is 1, as runc's.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from isolate.errors import IsolateError
from isolate.oci.runtime import DEFAULT_ROOT, OCI_VERSION, Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = "0.1.0"


class _Log:
    path: str | None = None
    format = "text"

    @classmethod
    def write(cls, level: str, msg: str) -> None:
        if not cls.path:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
        if cls.format == "json":
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f"time={json.dumps(stamp)} level={level} msg={json.dumps(msg)}"
        try:
            with open(cls.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def _runtime(ctx: click.Context) -> Runtime:
    obj: dict[str, Any] = ctx.find_root().obj
    return Runtime(obj["root"], obj["systemd_cgroup"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", default=DEFAULT_ROOT, show_default=True, help="Where container state is kept.")
@click.option("--log", "log_path", default=None, help="Append errors and warnings to this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", help="Log line format.")
@click.option("--systemd-cgroup", is_flag=True, help="Refused: isolate-oci drives cgroupfs.")
@click.option("--debug", is_flag=True, help="Accepted for runc compatibility.")
@click.option("--criu", default=None, hidden=True)
@click.option("--rootless", default=None, hidden=True)
@click.version_option(
    version=VERSION, prog_name="isolate-oci", message=f"isolate-oci version %(version)s\nspec: {OCI_VERSION}"
)
@click.pass_context
def cli(ctx: click.Context, root: str, log_path: str | None, log_format: str, systemd_cgroup: bool, debug: bool,
        criu: str | None, rootless: str | None) -> None:  # fmt: skip
    """isolate as an OCI runtime: podman --runtime, containerd's runc-binary, Kubernetes RuntimeClass."""
    _Log.path, _Log.format = log_path, log_format
    ctx.obj = {"root": root, "systemd_cgroup": systemd_cgroup}


def _create_options(f: Any) -> Any:
    f = click.option("--bundle", "-b", default=".", help="The bundle: config.json and the root filesystem.")(f)
    f = click.option("--pid-file", default=None, help="Write the container's pid here (no newline).")(f)
    f = click.option("--console-socket", default=None, help="Send the terminal's master here (SCM_RIGHTS).")(f)
    f = click.option("--no-pivot", is_flag=True, help="chroot over MS_MOVE instead of pivot_root.")(f)
    f = click.option("--no-new-keyring", is_flag=True, help="Accepted: no session keyring is made.")(f)
    f = click.option("--preserve-fds", default=0, type=int, help="Pass descriptors 3..3+N-1 to the container.")(f)
    return f


@cli.command()
@_create_options
@click.argument("container_id")
@click.pass_context
def create(ctx: click.Context, container_id: str, bundle: str, pid_file: str | None, console_socket: str | None,
           no_pivot: bool, no_new_keyring: bool, preserve_fds: int) -> None:  # fmt: skip
    """Create a container: built and waiting, not yet running its command."""
    _runtime(ctx).create(container_id, bundle, pid_file, console_socket, no_pivot, preserve_fds)


@cli.command()
@click.argument("container_id")
@click.pass_context
def start(ctx: click.Context, container_id: str) -> None:
    """Run the command of a created container."""
    _runtime(ctx).start(container_id)


@cli.command()
@_create_options
@click.option("--detach", "-d", is_flag=True, help="Do not wait for the container.")
@click.option("--keep", is_flag=True, help="Do not delete the container after it exits.")
@click.argument("container_id")
@click.pass_context
def run(ctx: click.Context, container_id: str, bundle: str, pid_file: str | None, console_socket: str | None,
        no_pivot: bool, no_new_keyring: bool, preserve_fds: int, detach: bool, keep: bool) -> None:  # fmt: skip
    """create + start; without --detach wait, delete and exit with the command's status."""
    runtime = _runtime(ctx)
    pid = runtime.create(container_id, bundle, pid_file, console_socket, no_pivot, preserve_fds)
    try:
        runtime.start(container_id)
    except BaseException:
        runtime.delete(container_id, force=True)
        raise
    if detach:
        return
    from isolate.oci.exec import forward_signals, wait_status

    forward_signals(pid)
    code = wait_status(pid)
    if not keep:
        runtime.delete(container_id, force=True)
    sys.exit(code)


@cli.command()
@click.argument("container_id")
@click.pass_context
def state(ctx: click.Context, container_id: str) -> None:
    """The container's state as runtime-spec JSON."""
    runtime = _runtime(ctx)
    click.echo(json.dumps(runtime.state_json(runtime.load(container_id)), indent=2))


@cli.command()
@click.option("--all", "-a", "all_processes", is_flag=True, help="Signal every process of the container.")
@click.argument("container_id")
@click.argument("signal_name", default="SIGTERM", required=False)
@click.pass_context
def kill(ctx: click.Context, container_id: str, signal_name: str, all_processes: bool) -> None:
    """Send a signal (name or number, default SIGTERM) to the container's process."""
    from isolate.detached.lifecycle import parse_signal

    _runtime(ctx).kill(container_id, _signal_number(signal_name, parse_signal), all_processes)


def _signal_number(text: str, fallback: Any) -> int:
    import _signal as signal

    name = text.upper().removeprefix("SIG")
    number = getattr(signal, "SIG" + name, None)
    if isinstance(number, int):
        return number
    rt = {"RTMIN": signal.SIGRTMIN, "RTMAX": signal.SIGRTMAX}
    for base, value in rt.items():
        if name.startswith(base):
            offset = name[len(base) :]
            return value + int(offset) if offset else value
    return int(fallback(text))


@cli.command()
@click.option("--force", "-f", is_flag=True, help="Kill a running container first; an unknown id is no error.")
@click.argument("container_id")
@click.pass_context
def delete(ctx: click.Context, container_id: str, force: bool) -> None:
    """Remove a stopped container: its cgroup and state."""
    _runtime(ctx).delete(container_id, force)


@cli.command()
@click.argument("container_id")
@click.pass_context
def pause(ctx: click.Context, container_id: str) -> None:
    """Freeze every process of the container (cgroup freezer)."""
    _runtime(ctx).pause(container_id, True)


@cli.command()
@click.argument("container_id")
@click.pass_context
def resume(ctx: click.Context, container_id: str) -> None:
    """Thaw a paused container."""
    _runtime(ctx).pause(container_id, False)


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("--process", "-p", "process_file", default=None, help="A runtime-spec process JSON file.")
@click.option("--detach", "-d", is_flag=True, help="Do not wait for the process.")
@click.option("--pid-file", default=None, help="Write the process's pid here (no newline).")
@click.option("--tty", "-t", is_flag=True, help="Give the process a terminal (with --console-socket).")
@click.option("--console-socket", default=None, help="Send the terminal's master here.")
@click.option("--cwd", default=None, help="Working directory in the container.")
@click.option("--env", "-e", multiple=True, help="KEY=VALUE, added to the container's environment.")
@click.option("--user", "-u", default=None, help="UID[:GID].")
@click.option("--additional-gids", "-g", multiple=True, type=int, help="Supplementary groups.")
@click.option("--cap", "-c", multiple=True, help="A capability to add.")
@click.option("--no-new-privs", is_flag=True, help="Set no_new_privs.")
@click.option("--preserve-fds", default=0, type=int, help="Pass descriptors 3..3+N-1 to the process.")
@click.argument("container_id")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx: click.Context, container_id: str, command: tuple[str, ...], process_file: str | None, detach: bool,
          pid_file: str | None, tty: bool, console_socket: str | None, cwd: str | None, env: tuple[str, ...],
          user: str | None, additional_gids: tuple[int, ...], cap: tuple[str, ...], no_new_privs: bool,
          preserve_fds: int) -> None:  # fmt: skip
    """Run another process in a running container."""
    from isolate.oci.exec import execute

    runtime = _runtime(ctx)
    record = runtime.load(container_id)
    if process_file:
        try:
            with open(process_file) as f:
                process: dict[str, Any] = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:
            raise IsolateError(f"--process {process_file}: cannot read a process JSON: {exc}") from None
        from isolate.oci.bundle import PROCESS_SCHEMA, check

        check(process, PROCESS_SCHEMA, f"--process {process_file}")
    else:
        base = record.get("process") or {}
        process = {k: v for k, v in base.items() if k not in ("args", "terminal", "consoleSize")}
        process["args"] = list(command)
        process["terminal"] = tty
        if env:
            process["env"] = list(base.get("env") or []) + list(env)
        if cwd:
            process["cwd"] = cwd
        if user:
            uid, _, gid = user.partition(":")
            process["user"] = {"uid": int(uid), "gid": int(gid or 0), "additionalGids": list(additional_gids)}
        if cap:
            caps = dict(base.get("capabilities") or {})
            for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
                caps[key] = sorted(set(caps.get(key) or []) | set(cap))
            process["capabilities"] = caps
        if no_new_privs:
            process["noNewPrivileges"] = True
    code = execute(runtime, container_id, process, detach, pid_file, console_socket, preserve_fds)
    sys.exit(code)


@cli.command()
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("container_id")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def ps(ctx: click.Context, container_id: str, fmt: str, ps_args: tuple[str, ...]) -> None:
    """The container's processes (host pids)."""
    pids = _runtime(ctx).pids(container_id)
    if fmt == "json":
        click.echo(json.dumps(pids))
        return
    import subprocess

    out = subprocess.run(["/bin/ps", *(ps_args or ("-ef",))], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    if not lines:
        return
    header = lines[0]
    column = header.split().index("PID")
    click.echo(header)
    wanted = {str(p) for p in pids}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column] in wanted:
            click.echo(line)


@cli.command("list")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--quiet", "-q", is_flag=True, help="Only the ids.")
@click.pass_context
def list_(ctx: click.Context, fmt: str, quiet: bool) -> None:
    """Every container under --root."""
    runtime = _runtime(ctx)
    items = [runtime.state_json(r) for r in runtime.records()]
    if quiet:
        for item in items:
            click.echo(item["id"])
    elif fmt == "json":
        click.echo(json.dumps(items))
    else:
        click.echo(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for item in items:
            click.echo(f"{item['id']:<20}{item['pid']:<10}{item['status']:<10}{item['bundle']:<40}"
                       f"{item['created']:<32}root")  # fmt: skip


@cli.command()
@click.option("--resources", "-r", default=None, help="A runtime-spec linux.resources JSON file, or - for stdin.")
@click.option("--memory", default=None, type=int, help="Memory limit in bytes.")
@click.option("--memory-swap", default=None, type=int, help="Memory + swap limit in bytes.")
@click.option("--memory-reservation", default=None, type=int, help="Memory soft limit in bytes.")
@click.option("--cpu-period", default=None, type=int, help="CFS period in microseconds.")
@click.option("--cpu-quota", default=None, type=int, help="CFS quota in microseconds.")
@click.option("--cpu-share", default=None, type=int, help="CPU shares.")
@click.option("--cpuset-cpus", default=None, help="CPUs, e.g. 0-1.")
@click.option("--cpuset-mems", default=None, help="Memory nodes.")
@click.option("--pids-limit", default=None, type=int, help="Maximum number of processes.")
@click.argument("container_id")
@click.pass_context
def update(ctx: click.Context, container_id: str, resources: str | None, memory: int | None,
           memory_swap: int | None, memory_reservation: int | None, cpu_period: int | None, cpu_quota: int | None,
           cpu_share: int | None, cpuset_cpus: str | None, cpuset_mems: str | None,
           pids_limit: int | None) -> None:  # fmt: skip
    """Change the resource limits of a running container."""
    if resources:
        try:
            text = sys.stdin.read() if resources == "-" else open(resources).read()
            res: dict[str, Any] = json.loads(text)
        except (OSError, ValueError, RecursionError) as exc:
            raise IsolateError(f"--resources {resources}: cannot read linux.resources JSON: {exc}") from None
        from isolate.oci.bundle import RESOURCES_SCHEMA, check

        check(res, RESOURCES_SCHEMA, f"--resources {resources}")
    else:
        res = {}
    mem = {k: v for k, v in (("limit", memory), ("swap", memory_swap), ("reservation", memory_reservation))
           if v is not None}  # fmt: skip
    cpu = {k: v for k, v in (("period", cpu_period), ("quota", cpu_quota), ("shares", cpu_share),
                             ("cpus", cpuset_cpus), ("mems", cpuset_mems)) if v is not None}  # fmt: skip
    if mem:
        res["memory"] = {**(res.get("memory") or {}), **mem}
    if cpu:
        res["cpu"] = {**(res.get("cpu") or {}), **cpu}
    if pids_limit is not None:
        res["pids"] = {"limit": pids_limit}
    _runtime(ctx).update(container_id, res)


@cli.command()
@click.option("--bundle", "-b", default=".", help="Where to write config.json.")
@click.option("--rootfs", default="rootfs", help="root.path to write.")
def spec(bundle: str, rootfs: str) -> None:
    """Write a default config.json (runc's defaults) into the bundle directory."""
    from isolate.oci.template import default_config

    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise IsolateError(f"{path}: config.json already exists; remove it first")
    with open(path, "w") as f:
        json.dump(default_config(rootfs=rootfs), f, indent=2)


@cli.command()
def features() -> None:
    """What this runtime supports, as runtime-spec's features JSON."""
    from isolate.oci import bundle as B

    click.echo(json.dumps({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted([*B.FLAGS, *B.PROPAGATION, *B.RECURSIVE]),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": ["CAP_" + c for c in _caps()],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_NATIVE"],
            },  # fmt: skip
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"io.github.isolate.version": VERSION},
    }, indent=2))  # fmt: skip


def _caps() -> list[str]:
    from isolate.plan.security import CAPS

    return CAPS


def main() -> None:
    try:
        code = cli.main(sys.argv[1:], prog_name="isolate-oci", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        _Log.write("error", exc.format_message())
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code != 0 else 1)
    except IsolateError as exc:
        _fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}")
    except (KeyError, TypeError, ValueError) as exc:
        # A config.json or process.json field of the wrong shape (a mapping without hostID, a
        # string where a number goes): one line for the engine's log, not a traceback.
        _fail(f"invalid runtime-spec input: {type(exc).__name__}: {exc}; check config.json against runtime-spec")
    finally:
        from isolate.oci.warnings import collected

        for message in collected():
            _Log.write("warning", message)
            print(f"isolate-oci: warning: {message}", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    _Log.write("error", message)
    print(f"isolate-oci: {message}", file=sys.stderr)
    sys.exit(1)
