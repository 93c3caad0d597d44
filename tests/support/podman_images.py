"""Build, save, load and run small OCI test images with podman, offline, in a private store.

Everything podman keeps lives below ``store``: its image and container storage, temporary files,
network configuration, runc's state and its configuration files (containers.conf, storage.conf,
registries.conf, policy.json, auth.json, and a private $HOME); but its run state (runroot, file
locks rather than /dev/shm, conmon's sockets) lives in /tmp/ipodman-HASH, because podman refuses a
runroot path longer than 50 characters.
Nothing is ever pulled: images are referred to by fully qualified ``localhost/`` names and every
build and run says ``--pull=never``; registries.conf lists no search registry.

Every podman command runs in a private mount namespace (``unshare --mount --propagation private``):
whatever podman mounts (storage layers, a container's /dev/shm) disappears with the namespace, even
when podman is killed, so no mount can leak onto the host.  Containers get the cgroup parent
``cgroup_parent(store)`` (one per store, at the root of each hierarchy: podman's default,
/libpod_parent, would be shared and left behind); ``cleanup`` kills what is left in it and
removes it.

Host facts this relies on (Debian 12, podman 4.3, hybrid cgroup v1 layout, no systemd as PID 1,
no CAP_SYS_RESOURCE): the cgroupfs cgroup manager; runc (crun 1.8 refuses the hybrid layout);
default ulimits nofile=20000 and nproc=32768, which root can set without CAP_SYS_RESOURCE; no
events journal.

Other runtimes: ``add_runtime(store, NAME, BINARY)`` registers NAME in the store's containers.conf
``[engine.runtimes]``: a wrapper that runs ``BINARY --root DIR ARGS`` (DIR below the run state
directory, short enough for sockets' paths), logging each invocation (its argv, its exit status,
config.json for ``create``, the process for ``exec``) to a file; ``podman(..., runtime=NAME)`` uses it.
``import_rootfs`` makes an image of a root filesystem directory (``podman import``), and
``podman_command`` gives a podman command line and its environment, to run it oneself (under a
pty, in the background).

Opaque whiteouts: buildah makes a layer from the storage driver's diff.  The vfs driver compares
directory trees and writes one ``.wh.NAME`` per deleted file, so ``rm -rf /opt/d && mkdir /opt/d``
gives ``.wh.one`` and ``.wh.two``, never ``.wh..wh..opq``.  The overlay driver turns the opaque
directory that the kernel's overlayfs makes for the re-created directory into ``.wh..wh..opq``,
so the test images are built with the overlay driver (in its private mount namespace, in its own
part of the store); loading and running use vfs.  Where overlayfs is unusable, the build falls
back to vfs and the RUN step also writes the ``.wh..wh..opq`` marker file itself (the layer then
holds the two single whiteouts and the opaque marker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, TypedDict

BASE_REF = "localhost/isolate-test-base:latest"
REF = "localhost/isolate-test:latest"
SIBLING_REF = "localhost/isolate-test-sibling:latest"

# The files the first layer of REF adds, and what the image then looks like.
FILES = {
    "data/a": b"a\n",
    "data/keep": b"keep\n",
    "etc/hello": b"hello-from-layer\n",
    "opt/d/one": b"one\n",
    "opt/d/two": b"two\n",
}
HELLO = FILES["etc/hello"].decode()
DELETED = "/data/a"  # removed by a later layer: a ".wh.a" whiteout
OPAQUE_DIR = "/opt/d"  # emptied and re-created by a later layer: holds only "three"
CMD_OUTPUT = "hello from /data\n"  # what the image's CMD prints (ENV GREETING, WORKDIR /data)
SIBLING_FILE = ("etc/sibling", b"sibling\n")

CONTAINERFILE = """\
FROM {base}
COPY files/ /
RUN rm /data/a
RUN rm -rf /opt/d && mkdir /opt/d && echo three > /opt/d/three{marker}
ENV GREETING=hello
WORKDIR /data
CMD ["sh", "-c", "echo $GREETING from $(pwd)"]
"""
SIBLING_CONTAINERFILE = """\
FROM {base}
COPY sibling /etc/sibling
"""

TIMEOUT = 300.0
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodmanError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace") if isinstance(self.stderr, bytes) else str(self.stderr)
        return f"{super().__str__()}\n{err.strip()[-3000:]}"


class BuiltImages(TypedDict):
    """What ``build_test_images`` made, and the facts tests can check against it."""

    oci_archive: Path  # podman save --format oci-archive
    docker_archive: Path  # podman save --format docker-archive (podman's default)
    oci_dir: Path  # podman save --format oci-dir: an OCI image layout directory
    sibling_oci_archive: Path  # SIBLING_REF, oci-archive: shares its base layer with REF
    layers: int  # layers of REF (base + added files + deletion + opaque directory)
    sibling_layers: int
    base_ref: str
    ref: str
    sibling_ref: str
    layer_digests: list[str]  # the OCI archive's layer (blob) digests of REF, base first
    opaque: str  # how the opaque whiteout was made: "overlay" (by the driver) or "marker" (by RUN)
    seconds: float  # how long the build and the saves took


def cgroup_parent(store: Path) -> str:
    """The cgroup parent of this store's containers and their conmon, at each hierarchy's root."""
    return "/isolate-podman-" + hashlib.sha256(str(Path(store).resolve()).encode()).hexdigest()[:12]


def _short_dir(store: Path) -> Path:
    """Where the store's run state lives: podman 4.3 refuses a runroot longer than 50 characters
    (its sockets' paths must fit in sockaddr_un), which tmp_path's paths easily are."""
    return Path("/tmp") / ("ipodman-" + hashlib.sha256(str(Path(store).resolve()).encode()).hexdigest()[:12])


def _paths(store: Path, driver: str) -> dict[str, Path]:
    base = Path(store).resolve() / driver
    run = _short_dir(store) / driver
    return {
        "base": base,
        "root": base / "root",
        "runroot": run / "runroot",
        "tmp": base / "tmp",
        "libpod_tmp": run / "libpod",
        "home": base / "home",
        "net": base / "net",
        "containers_conf": base / "containers.conf",
        "storage_conf": base / "storage.conf",
        "registries_conf": base / "registries.conf",
        "policy": base / "home" / ".config" / "containers" / "policy.json",
        "auth": base / "auth.json",
        "runc": base / "runc",  # runc with --root below the store
        "runc_root": base / "runc-state",
        "runtimes": base / "runtimes",  # add_runtime's wrappers (NAME) and logs (NAME.log)
        "runtime_roots": run / "runtimes",  # their --root directories (NAME)
    }


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _setup(store: Path, driver: str) -> dict[str, Path]:
    """Write this store's configuration files (once) and return its paths."""
    p = _paths(store, driver)
    for key in ("runroot", "libpod_tmp"):
        p[key].mkdir(parents=True, exist_ok=True)
    if p["containers_conf"].exists():
        return p
    for key in ("root", "tmp", "net", "home"):
        p[key].mkdir(parents=True, exist_ok=True)
    p["policy"].parent.mkdir(parents=True, exist_ok=True)
    p["policy"].write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    p["auth"].write_text("{}\n")
    runc = shutil.which("runc", path=SBIN_PATH)
    if runc is None:
        raise FileNotFoundError("runc is not installed (apt-get install runc)")
    # runc keeps its state in /run/runc by default: podman, conmon and buildah all call it
    # through this wrapper instead (with absolute paths: engines may call it with an empty PATH).
    p["runc"].write_text(f'#!/bin/sh\nexec {shlex.quote(runc)} --root {shlex.quote(str(p["runc_root"]))} "$@"\n')
    p["runc"].chmod(0o755)
    p["registries_conf"].write_text("unqualified-search-registries = []\n")
    p["storage_conf"].write_text(
        f"[storage]\ndriver = {_toml(driver)}\ngraphroot = {_toml(str(p['root']))}\n"
        f"runroot = {_toml(str(p['runroot']))}\n"
    )
    _write_containers_conf(p)
    return p


def _write_containers_conf(p: dict[str, Path]) -> None:
    """containers.conf: our paths and defaults, runc and every runtime that add_runtime made."""
    extra = sorted(w for w in p["runtimes"].glob("*") if w.suffix == "") if p["runtimes"].is_dir() else []
    runtimes = "".join(f"{w.name} = [{_toml(str(w))}]\n" for w in extra)
    json_ok = ", ".join(_toml(n) for n in ["crun", "runc", "kata", "runsc", "krun", *(w.name for w in extra)])
    p["containers_conf"].write_text(
        "[containers]\n"
        # Without CAP_SYS_RESOURCE root cannot raise RLIMIT_NOFILE above 20000 (podman's default
        # is 1048576) nor RLIMIT_NPROC above its hard limit.
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        'netns = "none"\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "none"\n'
        'runtime = "runc"\n'
        'lock_type = "file"\n'
        f"tmp_dir = {_toml(str(p['libpod_tmp']))}\n"
        f"image_copy_tmp_dir = {_toml(str(p['tmp']))}\n"
        f"static_dir = {_toml(str(p['root'] / 'libpod'))}\n"
        f"volume_path = {_toml(str(p['root'] / 'volumes'))}\n"
        # podman passes --log-format=json only to the runtimes named here (runc's flags): ours too
        f"runtime_supports_json = [{json_ok}]\n"
        "[engine.runtimes]\n"
        f"runc = [{_toml(str(p['runc']))}]\n"
        f"{runtimes}"
        "[network]\n"
        f"network_config_dir = {_toml(str(p['net']))}\n"
    )


# Runs the runtime as a child (not exec) to log its exit status; the container's processes are
# never the wrapper's children (conmon is their subreaper).  Each entry is written at once, at the
# end.  Tools by absolute path: engines may call runtimes with an empty PATH, which stays as it is.
_LOGGING_WRAPPER = """\
#!/bin/sh
start=$({date} +%s.%N)
entry="=== $({date} +%H:%M:%S.%N) pid $$ parent $PPID ($({cat} /proc/$PPID/comm 2>/dev/null)) cwd $PWD
argv:"
cmd= bundle=. logfile= process= prev=
for arg in "$@"; do
  entry="$entry '$arg'"
  case "$prev" in --bundle|-b) bundle=$arg;; --log) logfile=$arg;; --process|-p) process=$arg;; esac
  case "$arg" in
    --bundle=*) bundle=${{arg#--bundle=}};;
    --log=*) logfile=${{arg#--log=}};;
    --process=*) process=${{arg#--process=}};;
  esac
  if [ -z "$cmd" ]; then
    case "$prev" in
      --root|--log|--log-format|--criu|--rootless) ;;
      *) case "$arg" in -*) ;; *) cmd=$arg;; esac;;
    esac
  fi
  prev=$arg
done
entry="$entry
runs: {binary} --root {root} ..."
config=
if [ "$cmd" = create ] || [ "$cmd" = run ]; then
  config="
config.json ($bundle/config.json):
$({python} -m json.tool "$bundle/config.json" 2>&1)"
elif [ "$cmd" = exec ] && [ -n "$process" ]; then
  config="
process.json ($process):
$({python} -m json.tool "$process" 2>&1)"
fi
{binary} --root {root} "$@"
rc=$?
entry="$entry
exit status $rc after $({awk} "BEGIN {{ printf \\"%.3fs\\", $({date} +%s.%N) - $start }}")"
if [ $rc -ne 0 ] && [ -n "$logfile" ] && [ -s "$logfile" ]; then
  entry="$entry
--log $logfile (last lines):
$({tail} -n 5 "$logfile")"
fi
printf '%s%s\\n\\n' "$entry" "$config" >> {log}
exit $rc
"""


def add_runtime(store: Path, name: str, binary: str, log: Path | None = None, driver: str = "vfs") -> Path:
    """Register the OCI runtime ``binary`` as ``name`` in the store's containers.conf; return its log.

    Podman and conmon call a wrapper that runs ``binary --root DIR ARGS`` (DIR is private to the
    store, below its run state directory: ``runtime_root``) and appends to ``log`` (default:
    NAME.log next to the wrapper) an entry per invocation: its argv, caller, exit status and time,
    the tail of the runtime's --log file when it failed, for ``create`` the bundle's config.json
    and for ``exec --process FILE`` that file.  Use it with ``podman(store, ..., runtime=name)``.
    """
    p = _setup(store, driver)
    p["runtimes"].mkdir(exist_ok=True)
    root = runtime_root(store, name, driver)
    root.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else p["runtimes"] / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    wrapper = p["runtimes"] / name
    tools = {t: shutil.which(t, path=SBIN_PATH) or t for t in ("date", "cat", "awk", "tail")}
    values = {"binary": binary, "root": root, "log": log, "python": sys.executable, **tools}
    wrapper.write_text(_LOGGING_WRAPPER.format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    wrapper.chmod(0o755)
    _write_containers_conf(p)
    return log


def runtime_root(store: Path, name: str, driver: str = "vfs") -> Path:
    """The --root directory (the state) of the store's runtime ``name`` made by add_runtime."""
    return _paths(store, driver)["runtime_roots"] / name


def _env(p: dict[str, Path]) -> dict[str, str]:
    path = os.environ.get("PATH", "")
    extra = [d for d in SBIN_PATH.split(":") if d not in path.split(":")]
    return {
        "PATH": ":".join([d for d in [path, *extra] if d]),
        "LANG": "C.UTF-8",
        "HOME": str(p["home"]),  # ~/.config/containers/policy.json is ours
        "XDG_CONFIG_HOME": str(p["home"] / ".config"),
        "TMPDIR": str(p["tmp"]),
        "CONTAINERS_CONF": str(p["containers_conf"]),
        "CONTAINERS_STORAGE_CONF": str(p["storage_conf"]),
        "CONTAINERS_REGISTRIES_CONF": str(p["registries_conf"]),
        "REGISTRY_AUTH_FILE": str(p["auth"]),
    }


def podman_command(
    store: Path, *args: str, driver: str = "vfs", runtime: str = "runc"
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``podman ARGS`` on ``store`` (see ``podman``)."""
    exe = shutil.which("podman")
    if exe is None:
        raise FileNotFoundError("podman is not installed (apt-get install podman)")
    p = _setup(store, driver)
    args_list = list(args)
    if args_list and args_list[0] in ("run", "create", "build"):
        args_list.insert(1, f"--cgroup-parent={cgroup_parent(store)}")
    # In the private mount namespace, /var/lib is read-only: podman 4.3 run as root writes its
    # blob info cache to /var/lib/containers/cache whatever the store (it falls back to memory).
    private = 'mount --bind /var/lib /var/lib && mount -o remount,bind,ro /var/lib && exec "$@"'
    if str(p["base"]).startswith("/var/lib/"):
        private = 'exec "$@"'
    cmd = [
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", private, "sh",
        exe,
        "--root", str(p["root"]),
        "--runroot", str(p["runroot"]),
        "--storage-driver", driver,
        "--tmpdir", str(p["libpod_tmp"]),
        "--network-config-dir", str(p["net"]),
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
        "--runtime", runtime,
        *args_list,
    ]  # fmt: skip
    return cmd, _env(p)


def podman(
    store: Path,
    *args: str,
    input: bytes | None = None,
    check: bool = True,
    driver: str = "vfs",
    runtime: str = "runc",
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``podman ARGS`` on the private store ``store`` (storage driver ``driver``), offline.

    ``driver``: "vfs" (no layer mounts at all) or "overlay"; each has its own part of the store.
    ``runtime``: "runc" or a name given to ``add_runtime``.
    ``run``, ``create`` and ``build`` get ``--cgroup-parent cgroup_parent(store)`` (put the
    subcommand first).  ``input`` goes to podman's stdin (``run -i`` passes it on; stdin is
    /dev/null otherwise).  Raises PodmanError (with podman's stderr) on failure when ``check``.
    """
    cmd, env = podman_command(store, *args, driver=driver, runtime=runtime)
    proc = subprocess.run(
        cmd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise PodmanError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def import_rootfs(store: Path, rootfs: Path, ref: str, driver: str = "vfs") -> str:
    """``podman import`` the root filesystem directory ``rootfs`` as the image ``ref``; its id."""
    tar = Path(store).resolve() / "import.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    try:
        _tar_rootfs(rootfs, tar)
        return podman(store, "import", "--quiet", str(tar), ref, driver=driver).stdout.decode().strip()
    finally:
        tar.unlink(missing_ok=True)


def _tar_rootfs(rootfs: Path, dest: Path) -> None:
    """Tar a root filesystem directory with fixed owners and times (a reproducible base layer)."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(Path(rootfs).iterdir()):
            tar.add(entry, arcname=entry.name, filter=normalize)


def _write_context(ctx: Path, containerfile: str, files: dict[str, bytes]) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    for rel, data in files.items():
        path = ctx / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # COPY keeps modes and times: fix them so the layers are the same on every run.
    for path in sorted(ctx.rglob("*"), reverse=True):
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (0, 0))


def _overlay_works(store: Path) -> bool:
    podman(store, "info")  # raises on errors that are not the overlay driver's
    probe = podman(store, "info", "--format", "{{.Store.GraphDriverName}}", driver="overlay", check=False)
    return probe.returncode == 0 and probe.stdout.strip() == b"overlay"


def _oci_layers(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:

        def load(name: str) -> Any:
            f = tar.extractfile(name)
            assert f is not None, name
            return json.load(f)

        manifest = load("blobs/sha256/" + load("index.json")["manifests"][0]["digest"].split(":", 1)[1])
        return [layer["digest"] for layer in manifest["layers"]]


def _save(store: Path, driver: str, fmt: str, dest: Path, ref: str) -> Path:
    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    podman(store, "save", "--quiet", "--format", fmt, "-o", str(dest), ref, driver=driver)
    return dest


def build_test_images(store: Path, busybox_rootfs: Path, out: Path, driver: str = "auto") -> BuiltImages:
    """Build REF and SIBLING_REF on a base imported from ``busybox_rootfs``; save them into ``out``.

    REF has 4 layers: the base; /data/a, /data/keep, /etc/hello, /opt/d/one and two (COPY); the
    deletion of /data/a (``.wh.a``); /opt/d emptied and re-created with "three" (``.wh..wh..opq``).
    Its config: ENV GREETING=hello, WORKDIR /data, CMD prints CMD_OUTPUT.  SIBLING_REF is the base
    plus /etc/sibling.  ``driver``: "overlay" (a real opaque whiteout), "vfs" (the marker file is
    written by RUN) or "auto" (overlay when it works).  Nothing is pulled.
    """
    started = time.monotonic()
    store, out = Path(store), Path(out)
    if driver == "auto":
        driver = "overlay" if _overlay_works(store) else "vfs"
    opaque = "overlay" if driver == "overlay" else "marker"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(store).resolve() / "context"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    base_tar = work / "base.tar"
    _tar_rootfs(busybox_rootfs, base_tar)
    podman(store, "import", "--quiet", str(base_tar), BASE_REF, driver=driver)

    marker = "" if opaque == "overlay" else " && touch /opt/d/.wh..wh..opq"
    ctx = work / "image"
    _write_context(ctx, CONTAINERFILE.format(base=BASE_REF, marker=marker), {"files/" + k: v for k, v in FILES.items()})
    sib = work / "sibling"
    _write_context(sib, SIBLING_CONTAINERFILE.format(base=BASE_REF), {"sibling": SIBLING_FILE[1]})
    for ref, context in ((REF, ctx), (SIBLING_REF, sib)):
        build = ["build", "--pull=never", "--network=none", "--layers", "--timestamp=0", "--quiet"]
        podman(store, *build, "-t", ref, "-f", str(context / "Containerfile"), str(context), driver=driver)

    result = BuiltImages(
        oci_archive=_save(store, driver, "oci-archive", out / "image-oci.tar", REF),
        docker_archive=_save(store, driver, "docker-archive", out / "image-docker.tar", REF),
        oci_dir=_save(store, driver, "oci-dir", out / "image-oci-dir", REF),
        sibling_oci_archive=_save(store, driver, "oci-archive", out / "sibling-oci.tar", SIBLING_REF),
        layers=0,
        sibling_layers=0,
        base_ref=BASE_REF,
        ref=REF,
        sibling_ref=SIBLING_REF,
        layer_digests=[],
        opaque=opaque,
        seconds=0.0,
    )
    result["layer_digests"] = _oci_layers(result["oci_archive"])
    result["layers"] = len(result["layer_digests"])
    result["sibling_layers"] = len(_oci_layers(result["sibling_oci_archive"]))
    shutil.rmtree(work)
    result["seconds"] = time.monotonic() - started
    return result


def load_and_run(store: Path, archive: Path, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``podman load`` ``archive`` (any format podman reads) into ``store`` and run it once.

    The run: ``podman run --rm --network none --pull=never IMAGE ARGS`` (runc, cgroupfs, vfs).
    Returns the run's CompletedProcess (check its returncode, stdout and stderr).
    """
    loaded = podman(store, "load", "--quiet", "-i", str(archive))
    names = [
        line.split(":", 1)[1].strip().split(",")[0]
        for line in loaded.stdout.decode().splitlines()
        if line.startswith("Loaded image")
    ]
    if not names:
        raise RuntimeError(f"podman load {archive}: no image name in its output {loaded.stdout!r}")
    return podman(store, "run", "--rm", "--network=none", "--pull=never", names[0], *args, check=False)


def _cgroup_mounts() -> list[str]:
    from support.host import cgroup_mounts

    return cgroup_mounts()


def store_cgroups(store: Path) -> list[str]:
    """The store's cgroup parent in each hierarchy where it exists (none once cleaned up)."""
    return [m + cgroup_parent(store) for m in _cgroup_mounts() if os.path.isdir(m + cgroup_parent(store))]


def _remove_cgroups(store: Path) -> None:
    """Kill what is left in this store's cgroup parent (our containers and their conmon,
    started through this store), then remove it in every hierarchy."""
    from support.host import remove_cgroup_trees

    remove_cgroup_trees(store_cgroups(store))


def _mounts_below(path: Path) -> list[str]:
    from support.host import mount_points

    return mount_points(str(path.resolve()))


def cleanup(store: Path) -> None:
    """Remove everything podman made for ``store``: containers, images, cgroups, mounts, files."""
    store = Path(store)
    if store.exists():
        for driver in ("vfs", "overlay"):
            if _paths(store, driver)["containers_conf"].exists():
                # reset alone would give each running container 10 s to stop
                podman(store, "rm", "--all", "--force", "--time=0", driver=driver, check=False, timeout=120)
                podman(store, "system", "reset", "--force", driver=driver, check=False, timeout=120)
    _remove_cgroups(store)
    short = _short_dir(store)
    for path in (short, store):
        if not path.exists():
            continue
        for point in reversed(_mounts_below(path)):  # none, unless podman ran outside unshare
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        shutil.rmtree(path)
