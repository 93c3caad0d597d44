"""From a SandboxConfig to a Plan: which namespaces, which steps, in which order."""

from __future__ import annotations

import os

from isolate import _libc as L
from isolate.config import DEFAULT_PATH, SandboxConfig
from isolate.errors import HostSupportError
from isolate.plan import mounts, overlay, rootfs, security
from isolate.plan.seccomp import LoadSeccomp
from isolate.plan.steps import (
    AwaitCgroup,
    Chdir,
    Chroot,
    JoinCgroup,
    LoopbackUp,
    MakeMountsPrivate,
    NoNewPrivs,
    PivotRoot,
    Plan,
    RemountRootReadOnly,
    SetHostname,
    SetUser,
    Step,
    Template,
    UnshareCgroupNamespace,
)

_NS_FLAGS = {"pid": L.CLONE_NEWPID, "net": L.CLONE_NEWNET, "uts": L.CLONE_NEWUTS, "ipc": L.CLONE_NEWIPC}


def clone_flags(config: SandboxConfig) -> int:
    flags = L.CLONE_NEWNS
    for name, flag in _NS_FLAGS.items():
        if name not in config.shared:
            flags |= flag
    return flags


def default_env(config: SandboxConfig, hostname: str, image_env: dict[str, str] | None = None) -> dict[str, str]:
    """docker's: PATH, HOSTNAME, HOME and TERM when the host has one; the image's Env, then --env."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOSTNAME": hostname,
        "HOME": "/root" if config.user is None or config.user[0] == 0 else "/",
    }
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    env.update(image_env or {})
    env.update(config.env)
    return env


class _ImageSettings:
    __slots__ = ("lowers", "argv", "env", "workdir", "user", "locks")

    def __init__(
        self,
        lowers: list[str],
        argv: list[str],
        env: dict[str, str],
        workdir: str | None,
        user: tuple[int, int] | None,
        locks: list[str],
    ) -> None:
        self.locks = locks
        self.lowers = lowers
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.user = user


def _image_settings(config: SandboxConfig, argv: list[str]) -> _ImageSettings:
    """An image's layers and the parts of its config a run uses (docker's rules)."""
    from isolate.errors import ConfigError
    from isolate.images import ImageStore
    from isolate.images.users import resolve_user

    store = ImageStore(config.image_root)
    image = store.get(config.image or "")
    lowers = [store.layer_dir(d) for d in reversed(image.layers)]  # top first, as overlayfs wants
    run = image.run_config
    entrypoint = list(run.get("Entrypoint") or [])
    command = argv or list(run.get("Cmd") or [])
    if not entrypoint + command:
        raise ConfigError(f"{config.image}: the image has no CMD or ENTRYPOINT; give the command to run")
    env = dict(item.split("=", 1) for item in run.get("Env") or [] if "=" in item)
    user = None
    if run.get("User") and config.user is None:
        user = resolve_user(run["User"], lowers)
    locks = store.layer_lock_files(image.layers)
    return _ImageSettings(lowers, entrypoint + command, env, run.get("WorkingDir") or None, user, locks)


def cgroup_dirs(config: SandboxConfig, sandbox_id: str) -> tuple[str | None, dict[str, str]]:
    """(backend version, directories) of this sandbox's cgroup, or (None, {}) for none."""
    limits = config.limits
    needed = config.cgroups is True or limits.any_cgroup_limit or limits.time is not None
    if config.cgroups is False:
        if needed:
            raise HostSupportError("limits need a cgroup: drop cgroups=False (--no-cgroup)")
        return None, {}
    from isolate import cgroups

    backend = cgroups.backend()
    if backend is None:
        if needed:
            raise HostSupportError(
                "no cgroup hierarchy is mounted, so limits cannot be enforced: mount cgroup2 at "
                "/sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup); isolate doctor shows the layout"
            )
        return None, {}
    share_pid = "pid" in config.shared
    return backend.version, backend.dirs(sandbox_id, config.cgroup_parent, limits, share_pid)


def _subordinate(path: str, names: tuple[str, ...]) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.strip().partition(":")
                if name in names:
                    start, _, count = rest.partition(":")
                    return int(start), int(count)
    except (OSError, ValueError):
        pass
    return None


def id_maps() -> list[tuple[int, int, int]]:
    """(inside, outside, count) lines for a user namespace's uid and gid maps.

    Root: its range in /etc/subuid, else 100000-165535.  An ordinary user: itself as root and
    its /etc/subuid range above, written by the setuid newuidmap/newgidmap; without those,
    only itself as root (which it may map alone, user_namespaces(7)).
    """
    uid = os.geteuid()
    if uid == 0:
        start, count = _subordinate("/etc/subuid", ("root", "0")) or (100000, 65536)
        return [(0, start, count)]
    import pwd
    import shutil

    name = pwd.getpwuid(uid).pw_name
    sub = _subordinate("/etc/subuid", (name, str(uid)))
    if sub and shutil.which("newuidmap") and shutil.which("newgidmap"):
        return [(0, uid, 1), (1, sub[0], sub[1])]
    return [(0, uid, 1)]


def _seccomp_program(config: SandboxConfig) -> bytes | None:
    if config.privileged or config.seccomp == "unconfined":
        return None
    from isolate.plan import seccomp

    if config.seccomp == "default":
        profile = seccomp.DEFAULT_PROFILE
    else:
        profile = seccomp.load_docker_profile(config.seccomp)
    with open(seccomp.cached_program(config.state_dir, profile), "rb") as f:
        return f.read()


def next_plan(template: Template, config: SandboxConfig, sandbox_id: str) -> Plan:
    """build_plan(config, sandbox_id, ...) for the configuration ``template`` was built for,
    made from the template instead (Plan.with_identity)."""
    config.validate()
    version, dirs = cgroup_dirs(config, sandbox_id)
    files: list[str] = []
    if version is not None:
        from isolate.cgroups.base import join_files

        files = join_files(version, dirs)
    plan = template.plan.with_identity((sandbox_id, dirs, files))
    plan.template = template
    return plan


def build_plan(config: SandboxConfig, sandbox_id: str, argv: list[str]) -> Plan:
    """The ordered steps that build this sandbox.  Validates ``config``; touches nothing."""
    config.validate()
    version, dirs = cgroup_dirs(config, sandbox_id)
    flags = clone_flags(config)
    stage = os.path.join(config.state_dir, "mnt")
    root = f"{stage}/root"
    keep_dirs: list[str] = []
    if config.keep:
        upper, work = (os.path.join(config.state_dir, sandbox_id, d) for d in ("upper", "work"))
        keep_dirs = [upper, work]
    else:
        upper, work = f"{stage}/upper", f"{stage}/work"

    steps: list[Step] = []
    userns = id_maps() if config.userns else None
    parent_joins: list[str] = []
    if userns is not None:
        flags |= L.CLONE_NEWUSER
    join: list[Step] = []
    if version is not None:
        # The parent makes the cgroup while the child mounts the root; the child then joins
        # before anything of the command's runs (and before isolate's init forks).  In a user
        # namespace the cgroup's files are the host root's: the parent moves the child.
        from isolate.cgroups.base import attach_files, join_files

        if userns is None:
            join = [AwaitCgroup(), JoinCgroup(join_files(version, dirs)), UnshareCgroupNamespace()]
        else:
            parent_joins = attach_files(dirs)
            steps.append(UnshareCgroupNamespace())
        if config.init:
            steps += join
            join = []
    steps.append(MakeMountsPrivate())
    steps += overlay.stage_steps(stage)
    image = _image_settings(config, list(argv)) if config.image is not None else None
    host_image = config.rootfs is None and image is None
    if host_image:
        skel = f"{stage}/skel"
        steps += rootfs.host_skeleton_steps(skel)
        lowers = [skel]
    elif image is not None:
        lowers = list(reversed(config.layers)) + image.lowers
        argv = image.argv
    else:
        lowers = list(reversed(config.layers)) + [config.rootfs]  # type: ignore[list-item]
    steps += overlay.overlay_steps(lowers, upper, work, root)
    if host_image:
        steps += rootfs.host_bind_steps()
    steps += mounts.proc_steps()
    steps += mounts.sys_steps()
    steps += mounts.dev_steps(
        own_ipc="ipc" not in config.shared, userns=userns is not None, tty_group=userns is None or len(userns) > 1
    )
    steps += mounts.tmp_steps()
    if not config.privileged:
        steps += security.mask_steps(root)
    if "net" not in config.shared:
        steps.append(LoopbackUp())
    hostname = config.hostname or ("" if "uts" in config.shared else sandbox_id)
    if hostname:
        steps.append(SetHostname(hostname))
    # As late as the cgroup mounts allow: all the steps above overlap the parent's cgroup work.
    steps += join
    if version is not None and userns is None:  # v1 hierarchies cannot be mounted in a user namespace
        steps += mounts.cgroup_steps(version, dirs)
    steps += [mounts.tmpfs_step(t) for t in config.tmpfs]
    steps += [mounts.volume_step(v) for v in config.volumes]
    steps.append(PivotRoot() if config.mode == "pivot_root" else Chroot())
    workdir = config.workdir or (image.workdir if image is not None else None) or "/"
    steps.append(Chdir(workdir))
    if config.read_only:
        steps.append(RemountRootReadOnly())
    if not config.privileged:
        steps.append(NoNewPrivs())
        steps.append(security.ExecOnlyBeneathRoot())
    if config.oom_score_adj is not None:
        steps.append(security.SetOomScoreAdj(config.oom_score_adj))
    steps += security.ulimit_steps(config.ulimits)
    caps = security.resolve_caps(config.cap_add, config.cap_drop, config.privileged)
    steps.append(security.DropCapabilities(sorted(caps), security.last_cap()))
    user = config.user or (image.user if image is not None else None)
    if user is not None:
        steps.append(SetUser(user[0], user[1], []))
    program = _seccomp_program(config)
    if program is not None:
        steps.append(LoadSeccomp(program))
    env = default_env(config, hostname or os.uname().nodename, image.env if image is not None else None)
    return Plan(
        sandbox_id=sandbox_id,
        clone_flags=flags,
        stage_dir=stage,
        root=root,
        steps=steps,
        argv=list(argv),
        env=env,
        new_pid_ns=bool(flags & L.CLONE_NEWPID),
        keep_dirs=keep_dirs,
        work_dir_to_remove=work if config.keep else None,
        upper_dir=upper if config.keep else None,
        cgroup_version=version,
        cgroup_dirs=dirs,
        cgroup_parent=config.cgroup_parent,
        limits=config.limits,
        share_pid="pid" in config.shared,
        state_dir=config.state_dir,
        layer_locks=image.locks if image is not None else None,
        init=config.init,
        workdir=workdir,
        user=user,
        userns=userns,
        parent_joins=parent_joins,
    )
