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


@cli.group()
@click.option("--root", envvar="ISOLATE_ROOT", default=None, metavar="DIR",
              help="The image store's directory (default /var/lib/isolate).")  # fmt: skip
@click.pass_context
def image(ctx: click.Context, root: str | None) -> None:
    """Images: import (OCI and docker archives, rootfs tarballs), list, inspect, export, remove."""
    from .images import ImageStore

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
    from .images.formats import import_path

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


@image.command("build-busybox")
@click.argument("name")
@click.pass_obj
def image_build_busybox(store: Any, name: str) -> None:
    """Make an image from Debian's busybox-static (no network)."""
    from .images.formats import build_busybox

    img = build_busybox(store, name)
    click.echo(f"{img.id}  {' '.join(img.names)}")


@image.command("from-dir")
@click.argument("directory")
@click.argument("name")
@click.pass_obj
def image_from_dir(store: Any, directory: str, name: str) -> None:
    """Make a one-layer image of a root filesystem directory."""
    from .images.formats import import_directory

    img = import_directory(store, directory, name)
    click.echo(f"{img.id}  {' '.join(img.names)}")


@image.command("export")
@click.argument("name")
@click.argument("out")
@click.pass_obj
def image_export(store: Any, name: str, out: str) -> None:
    """Write an image as an OCI archive (podman load, skopeo copy oci-archive:...)."""
    from .images.export import export_oci

    click.echo(export_oci(store, name, out))
