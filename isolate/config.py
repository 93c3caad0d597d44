"""The user's request, validated: what a sandbox should look like (not yet how to build it)."""

from __future__ import annotations

import os

from isolate.errors import ConfigError
from isolate.limits import Limits

# Where isolate makes its cgroups, at the root of each hierarchy (as runc and docker's
# cgroupfs driver do): every sandbox's group is a child of it, and `isolate gc` looks only there.
DEFAULT_CGROUP_PARENT = "isolate"

NAMESPACES = ("pid", "net", "uts", "ipc", "mount")
MODES = ("pivot_root", "chroot")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STATE_DIR = "/run/isolate"


def default_state_dir() -> str:
    """$ISOLATE_STATE_DIR; else /run/isolate for root, and a directory of the user's own otherwise."""
    if "ISOLATE_STATE_DIR" in os.environ:
        return os.environ["ISOLATE_STATE_DIR"]
    uid = os.geteuid()
    if uid == 0:
        return DEFAULT_STATE_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == uid:
        return os.path.join(runtime, "isolate")
    return f"/tmp/isolate-{uid}"


class Volume:
    """A host path bind-mounted into the sandbox (``--volume HOST:CTR[:ro]``)."""

    __slots__ = ("source", "target", "read_only")

    def __init__(self, source: str, target: str, read_only: bool = False) -> None:
        self.source = source
        self.target = target
        self.read_only = read_only

    def __repr__(self) -> str:
        return f"Volume({self.source!r}, {self.target!r}, read_only={self.read_only})"

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        read_only = False
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            read_only = parts[2] == "ro"
            parts = parts[:2]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConfigError(f"--volume {text!r}: expected HOST:CONTAINER[:ro|rw]")
        return cls(parts[0], parts[1], read_only)


class Tmpfs:
    """A fresh tmpfs inside the sandbox (``--tmpfs PATH[:OPTIONS]``)."""

    __slots__ = ("target", "options")

    def __init__(self, target: str, options: str = "") -> None:
        self.target = target
        self.options = options

    def __repr__(self) -> str:
        return f"Tmpfs({self.target!r}, {self.options!r})"

    @classmethod
    def parse(cls, text: str) -> Tmpfs:
        target, _, options = text.partition(":")
        return cls(target, options)


class SandboxConfig:
    """Everything a sandbox is made of.  See :class:`isolate.Sandbox` for the meaning of each field."""

    def __init__(
        self,
        rootfs: str | None = None,
        layers: list[str] | None = None,
        volumes: list[Volume] | None = None,
        tmpfs: list[Tmpfs] | None = None,
        read_only: bool = False,
        hostname: str | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: tuple[int, int] | None = None,
        net: str = "none",
        share: frozenset[str] = frozenset(),
        mode: str = "pivot_root",
        keep: bool = False,
        state_dir: str | None = None,
        limits: Limits | None = None,
        cgroups: bool | None = None,
        cgroup_parent: str = DEFAULT_CGROUP_PARENT,
        image: str | None = None,
        image_root: str | None = None,
        init: bool = False,
        cap_add: list[str] | None = None,
        cap_drop: list[str] | None = None,
        privileged: bool = False,
        seccomp: str = "default",
        ulimits: list[str] | None = None,
        oom_score_adj: int | None = None,
        userns: bool = False,
    ) -> None:
        self.rootfs = rootfs
        self.layers = layers or []
        self.volumes = volumes or []
        self.tmpfs = tmpfs or []
        self.read_only = read_only
        self.hostname = hostname
        self.env = env or {}
        self.workdir = workdir
        self.user = user
        self.net = net
        self.share = share
        self.mode = mode
        self.keep = keep
        self.state_dir = state_dir or default_state_dir()
        self.limits = limits or Limits()
        self.cgroups = cgroups  # None: when the host has them; True: required; False: never
        self.cgroup_parent = cgroup_parent
        self.image = image  # NAME[:TAG] or id in the image store
        self.image_root = image_root  # the store's root (default /var/lib/isolate)
        self.init = init  # run isolate's init as PID 1 and the command as its child
        self.cap_add = cap_add or []
        self.cap_drop = cap_drop or []
        self.privileged = privileged  # all capabilities, no seccomp, no masked paths, no no_new_privs
        self.seccomp = seccomp  # "default", "unconfined" or a docker/OCI profile's path
        self.ulimits = ulimits or []
        self.oom_score_adj = oom_score_adj
        self.userns = userns  # a user namespace: root inside is an unprivileged id range outside

    def copy(self) -> SandboxConfig:
        new = SandboxConfig.__new__(SandboxConfig)
        new.__dict__.update(self.__dict__)
        return new

    def validate(self) -> None:
        """Raise ConfigError for anything wrong that can be seen before touching the system."""
        if self.rootfs is not None and self.image is not None:
            raise ConfigError("--rootfs and --image exclude each other: the image is the root filesystem")
        if self.rootfs is not None:
            self.rootfs = _existing_dir(self.rootfs, "rootfs", "pass a directory holding a root filesystem")
        elif self.layers and self.image is None:
            raise ConfigError("--layer needs --rootfs or --image: layers stack on a root filesystem")
        self.layers = [_existing_dir(p, "layer", "pass a directory") for p in self.layers]
        for vol in self.volumes:
            if not os.path.exists(vol.source):
                raise ConfigError(f"{vol.source}: volume source does not exist on the host; create it first")
            _absolute(vol.target, "volume target")
        for tmp in self.tmpfs:
            _absolute(tmp.target, "--tmpfs path")
        if self.workdir is not None:
            _absolute(self.workdir, "--workdir")
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.net not in ("none", "host"):
            raise ConfigError(f"--net {self.net!r}: choose none or host")
        unknown = set(self.share) - set(NAMESPACES)
        if unknown:
            raise ConfigError(
                f"--share {','.join(sorted(unknown))}: unknown namespace; choose from {', '.join(NAMESPACES)}"
            )
        if "mount" in self.share:
            raise ConfigError(
                "--share mount: the sandbox needs its own mount namespace for its root; "
                "use --volume to share host paths"
            )
        if self.hostname is not None:
            if "uts" in self.share:
                raise ConfigError("--hostname needs a UTS namespace of its own; drop --share uts")
            if not _valid_hostname(self.hostname):
                raise ConfigError(f"--hostname {self.hostname!r}: use letters, digits, '.' and '-' (64 at most)")
        parts = self.cgroup_parent.strip("/").split("/")
        if not self.cgroup_parent.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigError(f"--cgroup-parent {self.cgroup_parent!r}: give a relative path like isolate or ci/jobs")
        for key in self.env:
            if not key or "=" in key or "\0" in key:
                raise ConfigError(f"--env {key!r}: a variable name cannot be empty or hold '=' or NUL")

    @property
    def shared(self) -> frozenset[str]:
        return self.share | ({"net"} if self.net == "host" else set())


def parse_user(text: str) -> tuple[int, int]:
    """``UID[:GID]`` (numbers only: names would be looked up in the host's files, not the image's)."""
    uid, _, gid = text.partition(":")
    try:
        u = int(uid)
        g = int(gid) if gid else u
    except ValueError:
        raise ConfigError(f"--user {text!r}: expected numeric UID[:GID], e.g. 1000:1000") from None
    if u < 0 or g < 0:
        raise ConfigError(f"--user {text!r}: ids cannot be negative")
    if max(u, g) > 0xFFFFFFFE:  # (uid_t)-1 means "unchanged" to setuid(2)
        raise ConfigError(f"--user {text!r}: ids go up to 4294967294")
    return u, g


def parse_env(items: list[str]) -> dict[str, str]:
    """``K=V`` sets, a bare ``K`` copies the host's value (as ``docker run -e K`` does)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        env[key] = value
    return env


def _existing_dir(path: str, what: str, fix: str) -> str:
    full = os.path.abspath(path)
    if not os.path.exists(full):
        raise ConfigError(f"{path}: {what} does not exist; {fix}")
    if not os.path.isdir(full):
        raise ConfigError(f"{path}: {what} is not a directory; {fix}")
    return full


def _absolute(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise ConfigError(f"{what} {path!r} must be an absolute path inside the sandbox")


def _valid_hostname(name: str) -> bool:
    # RFC 1123 labels, without importing re (import time matters, see __init__).
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
    return 0 < len(name) <= 64 and name[0].isalnum() and name.isascii() and set(name) <= allowed
