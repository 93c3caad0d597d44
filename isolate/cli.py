"""The click command line (everything but the fast path of ``isolate run``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import __version__
from .cli_options import RUN_OPTIONS


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
        from .cli_run import execute_run

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
    from .doctor import print_report, run_checks

    checks = run_checks()
    print_report(checks, as_json)
    sys.exit(0 if all(c.ok or not c.required for c in checks) else 1)


@cli.command()
@click.option("--cgroup-parent", default="isolate", show_default=True, help="Parent cgroup of the sandboxes.")
def gc(cgroup_parent: str) -> None:
    """Remove what crashed or killed isolate processes left: their cgroups and lock files."""
    import os

    from .config import DEFAULT_STATE_DIR
    from .gc import collect

    for line in collect(os.environ.get("ISOLATE_STATE_DIR", DEFAULT_STATE_DIR), cgroup_parent):
        click.echo(f"removed {line}")
