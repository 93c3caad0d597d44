"""The click command line (everything but the fast path of ``isolate run``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from isolate import __version__
from isolate.cgroups.base import DEFAULT_PARENT
from isolate.cli.options import RUN_OPTIONS


def _run_command() -> click.Command:
    params: list[click.Parameter] = []
    for opt in RUN_OPTIONS:
        kwargs: dict[str, Any] = {"help": opt.help}
        if opt.flag:
            kwargs["is_flag"] = True
        else:
            kwargs["metavar"] = opt.metavar
            kwargs["multiple"] = opt.multiple
            if opt.choices:
                kwargs["type"] = click.Choice(opt.choices)
        params.append(click.Option(list(opt.names), opt.dest, **kwargs))
    params.append(click.Argument(["command"], nargs=-1, type=click.UNPROCESSED))

    def callback(command: tuple[str, ...], **opts: Any) -> None:
        from isolate.cli.run import execute_run

        sys.exit(execute_run(opts, list(command)))

    return click.Command(
        "run",
        params=params,
        callback=callback,
        context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
        help="Run COMMAND in a fresh sandbox: new pid, mount, uts, ipc and network namespaces, "
        "an overlay root (the host image by default), its own /proc, /sys, /dev and /tmp. "
        "Exits with COMMAND's status (128+N for signal N; 125 isolate error, 126 not "
        "executable, 127 not found).\n\n  isolate run --rootfs ./busybox -- sh -c 'echo $$'",
        short_help="Run a command in a fresh sandbox.",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="isolate")
def cli() -> None:
    """isolate: a minimal container runtime built from Linux isolation primitives."""


cli.add_command(_run_command())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(as_json: bool) -> None:
    """Check this host: privileges, kernel, namespaces, overlayfs, cgroup layout."""
    from isolate.cli.doctor import print_report, run_checks

    checks = run_checks()
    print_report(checks, as_json)
    sys.exit(0 if all(c.ok or not c.required for c in checks) else 1)


@cli.command()
@click.option("--cgroup-parent", default=DEFAULT_PARENT, show_default=True, help="Parent cgroup of the sandboxes.")
def gc(cgroup_parent: str) -> None:
    """Remove what crashed or killed isolate processes left: their cgroups and lock files."""

    from isolate.config import default_state_dir
    from isolate.detached.gc import collect

    for line in collect(default_state_dir(), cgroup_parent):
        click.echo(f"removed {line}")


@cli.group()
@click.option("--root", envvar="ISOLATE_ROOT", default=None, metavar="DIR",
              help="The image store's directory (default /var/lib/isolate).")  # fmt: skip
@click.pass_context
def image(ctx: click.Context, root: str | None) -> None:
    """Images: import (OCI and docker archives, rootfs tarballs), list, inspect, export, remove, verify."""
    from isolate.images import ImageStore

    ctx.obj = ImageStore(root)


def _progress() -> Any:
    """click progress bars on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None

    def start(label: str, total: int) -> Any:
        bar = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
        bar.__enter__()
        seen = [0]

        def update(done: int) -> None:
            bar.update(done - seen[0])
            seen[0] = done
            if done >= total:
                bar.__exit__(None, None, None)

        return update

    return start


@image.command("import")
@click.argument("path")
@click.option("--name", default=None, metavar="NAME[:TAG]", help="Name the image (default: from the archive).")
@click.pass_obj
def image_import(store: Any, path: str, name: str | None) -> None:
    """Import an OCI layout (directory or archive), a docker archive or a root filesystem tarball."""
    from isolate.images.formats import import_path

    for img in import_path(store, path, name, _progress()):
        click.echo(f"{img.id}  {' '.join(img.names) or '<none>'}  {len(img.layers)} layers")


@image.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def image_ls(store: Any, as_json: bool) -> None:
    """List the images of the store."""
    import json
    import time

    images = store.images()
    if as_json:
        click.echo(json.dumps([{k: v for k, v in i.to_dict().items() if k != "config"} for i in images], indent=1))
        return
    click.echo(f"{'NAME':40} {'ID':14} {'LAYERS':>6} {'SIZE':>10}  CREATED")
    for img in images:
        size = sum(store.disk_usage(d) for d in img.layers)
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(img.created))
        for name in img.names or ["<none>"]:
            click.echo(f"{name:40} {img.id[7:19]:14} {len(img.layers):6} {size / 1e6:8.1f}MB  {created}")


@image.command("inspect")
@click.argument("name")
@click.pass_obj
def image_inspect(store: Any, name: str) -> None:
    """Show an image's record: id, names, layers (with their directories) and config."""
    import json

    img = store.get(name)
    data = img.to_dict()
    data["layer_dirs"] = [store.layer_dir(d) for d in img.layers]
    click.echo(json.dumps(data, indent=2))


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def image_rm(store: Any, names: tuple[str, ...]) -> None:
    """Remove image names (an image goes with its last name; its unshared layers with it)."""
    for name in names:
        freed = store.remove(name)
        click.echo(f"removed {name}" + (f" ({len(freed)} layers freed)" if freed else ""))


@image.command("prune")
@click.pass_obj
def image_prune(store: Any) -> None:
    """Remove images without a name and layers no image uses."""
    for line in store.prune():
        click.echo(f"removed {line}")


@image.command("verify")
@click.option("--repair", is_flag=True, help="Remove what fails (layers, images, leftovers), except what is in use.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def image_verify(store: Any, repair: bool, as_json: bool) -> None:
    """Check every image's record, config and layers, each layer's files against the record kept
    when it was unpacked, and that no import left anything half-made; exit 1 naming what is wrong."""
    import json

    from isolate.images.verify import verify_store

    report = verify_store(store, repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for finding in report.problems:
            done = f" [{finding.resolution}]" if finding.resolution else ""
            click.echo(f"{finding.line()}{done}")
        for warning in report.warnings:
            click.echo(f"warning: {warning.line()}")
        click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@image.command("build-busybox")
@click.argument("name")
@click.pass_obj
def image_build_busybox(store: Any, name: str) -> None:
    """Make an image from Debian's busybox-static (no network)."""
    from isolate.images.formats import build_busybox

    img = build_busybox(store, name)
    click.echo(f"{img.id}  {' '.join(img.names)}")


@image.command("from-dir")
@click.argument("directory")
@click.argument("name")
@click.pass_obj
def image_from_dir(store: Any, directory: str, name: str) -> None:
    """Make a one-layer image of a root filesystem directory."""
    from isolate.images.formats import import_directory

    img = import_directory(store, directory, name)
    click.echo(f"{img.id}  {' '.join(img.names)}")


@image.command("export")
@click.argument("name")
@click.argument("out")
@click.pass_obj
def image_export(store: Any, name: str, out: str) -> None:
    """Write an image as an OCI archive (podman load, skopeo copy oci-archive:...)."""
    from isolate.images.export import export_oci

    click.echo(export_oci(store, name, out))


def _state_dir() -> str:

    from isolate.config import default_state_dir

    return default_state_dir()


def _uptime(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@cli.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also stopped and dead sandboxes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ps_command(show_all: bool, as_json: bool) -> None:
    """List detached sandboxes: id, name, status, pid, image, limits, uptime, memory."""
    import json
    import time

    from isolate import _state as state
    from isolate._state import status_of
    from isolate.detached.stats import memory_current

    rows: list[dict[str, Any]] = []
    for record in state.all_records(_state_dir()):
        status = status_of(record)
        if status not in ("running", "created") and not show_all:
            continue
        running = status == "running"
        rows.append({
            "id": record["id"], "name": record.get("name"), "status": status,
            "pid": record.get("pid") if running else None,
            "image": record.get("image") or record.get("rootfs"), "command": record.get("command"),
            "limits": record.get("limits"), "exit_code": record.get("exit_code"), "error": record.get("error"),
            "uptime": time.time() - float(record.get("started") or time.time()) if running else None,
            "memory": memory_current(record) if running else None,
        })  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'ID':13} {'NAME':16} {'STATUS':12} {'PID':>7} {'IMAGE':18} {'UPTIME':>7} {'MEMORY':>9}  COMMAND")
    for r in rows:
        status = r["status"] if r["status"] != "stopped" else f"exited({r['exit_code']})"
        memory = f"{r['memory'] / 1e6:.1f}MB" if r["memory"] is not None else "-"
        click.echo(
            f"{r['id']:13} {str(r['name'])[:16]:16} {status:12} {r['pid'] or '-':>7} {str(r['image'])[:18]:18} "
            f"{_uptime(r['uptime']) if r['uptime'] is not None else '-':>7} {memory:>9}  {' '.join(r['command'] or [])}"
        )


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin through (else /dev/null).")
@click.option("-t", "--tty", is_flag=True, help="A pseudo-terminal (job control, window size).")
@click.option("-e", "--env", multiple=True, metavar="K[=V]", help="Set a variable. Repeatable.")
@click.option("-u", "--user", default=None, metavar="UID[:GID]", help="Run as this user.")
@click.option("-w", "--workdir", default=None, metavar="PATH", help="Working directory inside.")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_command(interactive: bool, tty: bool, env: tuple[str, ...], user: str | None, workdir: str | None,
                 name: str, command: tuple[str, ...]) -> None:  # fmt: skip
    """Run COMMAND inside running sandbox NAME: same namespaces, root, cgroup and limits."""
    import os

    from isolate.config import parse_env, parse_user
    from isolate.detached import enter
    from isolate.detached.lifecycle import find

    record = find(_state_dir(), name)
    launcher = enter.prepare(record, list(command), parse_env(list(env)), parse_user(user) if user else None,
                             workdir, tty)  # fmt: skip
    closers: list[int] = []
    primary = -1
    sock = None
    if tty:
        import socket

        sock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        closers.append(child_end.detach())
        stdio = (closers[-1], closers[-1], closers[-1])
    else:
        stdin = 0 if interactive else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if not interactive:
            closers.append(stdin)
        stdio = (stdin, 1, 2)
    # Signals to relay are held from before the fork until the relay knows the child's pid:
    # a SIGTERM in between would end isolate and leave the command running unwatched.
    import signal as signal_module

    relayed = (signal_module.SIGTERM, signal_module.SIGINT, signal_module.SIGHUP)
    child = 0

    def relay(sig: int, _frame: object) -> None:
        if child:
            os.kill(child, sig)  # not reaped yet, so the pid is still the child's

    for sig in relayed:
        signal_module.signal(sig, relay)
    mask = signal_module.pthread_sigmask(signal_module.SIG_BLOCK, relayed)
    try:
        try:
            child = launcher.start(stdio)
        finally:
            signal_module.pthread_sigmask(signal_module.SIG_SETMASK, mask)
        if sock is not None:
            from isolate.process.terminal import receive_primary

            primary = receive_primary(sock)
    finally:
        if sock is not None:
            sock.close()
        for fd in closers:
            os.close(fd)
    pidfd = os.pidfd_open(child)
    try:
        if primary >= 0:
            from isolate.process.terminal import interact

            interact(primary, pidfd)
        _, status = os.waitpid(child, 0)
    finally:
        os.close(pidfd)
        if primary >= 0:
            os.close(primary)
    sys.exit(os.waitstatus_to_exitcode(status) % 256)


@cli.command()
@click.argument("name")
@click.argument("signal_name", default="KILL", metavar="[SIGNAL]")
def kill(name: str, signal_name: str) -> None:
    """Send SIGNAL (default KILL) to sandbox NAME's PID 1."""
    from isolate.detached.lifecycle import kill as kill_sandbox
    from isolate.detached.lifecycle import parse_signal

    kill_sandbox(_state_dir(), name, parse_signal(signal_name))


@cli.command()
@click.option("-t", "--time", "timeout", default=10.0, show_default=True, help="Seconds between TERM and KILL.")
@click.argument("names", nargs=-1, required=True)
def stop(timeout: float, names: tuple[str, ...]) -> None:
    """Stop sandboxes: SIGTERM, then SIGKILL after --time seconds."""
    from isolate.detached.lifecycle import stop as stop_sandbox

    for name in names:
        record = stop_sandbox(_state_dir(), name, timeout)
        click.echo(f"{record['name']} exited {record.get('exit_code')}")


@cli.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill a running sandbox first.")
@click.argument("names", nargs=-1, required=True)
def rm_command(force: bool, names: tuple[str, ...]) -> None:
    """Remove stopped sandboxes (their record and log)."""
    from isolate.detached.lifecycle import remove

    for name in names:
        click.echo(remove(_state_dir(), name, force))


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the sandbox writes until it stops.")
@click.argument("name")
def logs(follow: bool, name: str) -> None:
    """Print what detached sandbox NAME wrote to stdout and stderr."""
    import os
    import time

    from isolate import _state as state
    from isolate._state import status_of
    from isolate.detached.lifecycle import find

    record = find(_state_dir(), name)
    with open(str(record["log"]), "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                os.write(1, chunk)
                continue
            if not follow:
                return
            current = state.read_record(_state_dir(), str(record["id"])) or record
            if status_of(current) != "running":
                rest = f.read()
                if rest:
                    os.write(1, rest)
                return
            time.sleep(0.1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the run result as JSON.")
@click.argument("name")
def wait(as_json: bool, name: str) -> None:
    """Wait until sandbox NAME stops; exit with its exit status."""
    import json

    from isolate.detached.lifecycle import wait as wait_sandbox

    record = wait_sandbox(_state_dir(), name)
    if as_json:
        click.echo(json.dumps(record.get("result") or {}))
    if record.get("error"):  # isolate's failure, not the command's: docker inspect's State.Error
        click.echo(f"isolate: {record['error']}", err=True)
    code = record.get("exit_code")
    sys.exit(int(code) if isinstance(code, int) else 125)


@cli.command()
@click.option("--no-stream", is_flag=True, help="Print once and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (implies --no-stream).")
@click.argument("name")
def stats(no_stream: bool, as_json: bool, name: str) -> None:
    """Live memory, CPU, pids and I/O of sandbox NAME, from its cgroup (and psutil per process)."""
    import json
    import time

    from isolate._state import status_of
    from isolate.detached.lifecycle import find
    from isolate.detached.stats import sample

    record = find(_state_dir(), name)
    previous = None
    while True:
        if status_of(record) != "running":
            raise click.ClickException(f"{record['name']}: not running")
        current = sample(record, previous)
        if as_json:
            click.echo(json.dumps(current, indent=1))
            return
        cpu = f"{current['cpu_percent']:.1f}%" if current["cpu_percent"] is not None else "-"
        memory, peak = current["memory"] / 1e6, current["memory_peak"] / 1e6
        click.echo(f"{record['name']}: memory {memory:.1f}MB (peak {peak:.1f}MB)"
                   f"  cpu {current['cpu_seconds']:.2f}s {cpu}  pids {current['pids']}"
                   f"  io read {current['io_read'] / 1e6:.1f}MB write {current['io_write'] / 1e6:.1f}MB")  # fmt: skip
        for proc in current["processes"]:
            click.echo(f"    {proc['pid']:>7} {proc['rss'] / 1e6:8.1f}MB  {proc['cmdline']}")
        if no_stream:
            return
        previous = current
        time.sleep(1)


@cli.group()
def lab() -> None:
    """Guided labs: each primitive at work, the commands that show it, and a check."""


@lab.command("list")
def lab_list() -> None:
    """List the labs."""
    from isolate.labs import LABS

    for item in LABS:
        click.echo(f"{item.number:3}  {item.title}")


@lab.command("show")
@click.argument("number", type=int)
def lab_show(number: int) -> None:
    """Print a lab's text and the commands to try."""
    from isolate.labs import command_line, get

    item = get(number)
    click.echo(f"Lab {item.number}: {item.title}\n\n{item.text}\n\nTry:")
    for demo in item.demos:
        click.echo(f"  # {demo.why}\n  {command_line(demo)}")


@lab.command("run")
@click.argument("number", type=int)
def lab_run(number: int) -> None:
    """Run a lab's commands and show what each printed."""
    from isolate.labs import command_line, get, run_demo, unavailable

    item = get(number)
    reason = unavailable(item)
    if reason:
        raise click.ClickException(reason)
    click.echo(f"Lab {item.number}: {item.title}\n\n{item.text}\n")
    for demo in item.demos:
        click.echo(f"# {demo.why}\n$ {command_line(demo)}")
        _, out, err = run_demo(demo)
        click.echo((out + err).rstrip())
        problem = demo.expect(out, err)  # also cleans up what a demo kept (lab 6's upper layer)
        click.echo(f"  -> {'unexpected: ' + problem if problem else 'as the lab says'}\n")


@lab.command("check")
@click.argument("number", type=int)
def lab_check(number: int) -> None:
    """Run a lab again and check that the system does what the lab says; exit 1 if not."""
    from isolate.labs import command_line, get, run_demo, unavailable

    item = get(number)
    reason = unavailable(item)
    if reason:
        raise click.ClickException(reason)
    failed = 0
    for demo in item.demos:
        _, out, err = run_demo(demo)
        problem = demo.expect(out, err)
        click.echo(f"[{'FAIL' if problem else 'ok  '}] {demo.why}" + (f": {problem}\n       {command_line(demo)}"
                                                                       if problem else ""))  # fmt: skip
        failed += bool(problem)
    sys.exit(1 if failed else 0)


@cli.group()
def net() -> None:
    """Networks between sandboxes."""


@net.command("connect")
@click.option("--subnet", default="10.213.0.0/30", show_default=True, help="Addresses for the two ends.")
@click.argument("first")
@click.argument("second")
def net_connect(subnet: str, first: str, second: str) -> None:
    """Join two running sandboxes with a veth pair; print their addresses."""
    from isolate.detached.lifecycle import find
    from isolate.detached.network import connect

    state_dir = _state_dir()
    a, b = connect(find(state_dir, first), find(state_dir, second), subnet)
    click.echo(f"{first} {a}\n{second} {b}")
