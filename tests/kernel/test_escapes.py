"""The known escapes from container runtimes, each tried against ``isolate run``, ``isolate exec``
and ``isolate-oci``: every test reproduces the published attack from inside a sandbox and
checks that it fails.

| CVE | the attack | what fails here |
|---|---|---|
| 2019-5736 | overwrite the runtime's binary through /proc/self/exe | the sandbox gets no handle on it |
| 2024-21626 | a runtime's directory descriptor leaked as the working directory | the cwd stays in the root |
| 2018-15664 | a symlink swapped while the runtime writes into the sandbox's tree | nothing lands outside |
| 2019-14271 | a symlink swapped while the runtime copies out of the sandbox's tree | no host file is copied |
| 2022-0492 | a cgroup v1 release_agent written from inside | no release_agent can be written |
| 2016-9962 | ptrace or /proc of the runtime's process while it execs | its memory and descriptors stay out of reach |
| 2021-30465 | a mount target swapped for a symlink while it is mounted | the mount lands in the root |
| 2017-5226 | TIOCSTI: typing into the caller's terminal | the caller's terminal is not the sandbox's |

Every attack is harmless to the host even if a defence is missing:

- the runtime under test is a copy: ``runtimes`` makes two virtual environments whose
  ``python3.11`` is a copied file (one runs the front end under test, the other the monitor of
  the detached sandboxes), so "the runtime's binary" is a file this test owns; and no attack
  writes a byte to it: opening it for writing is the proof, and checksums of both copies and of
  the host's own interpreter are compared before and after;
- what an attack aims at outside the sandbox is a directory the test owns, with a canary file,
  checked unchanged afterwards;
- a release_agent is written only in a cgroup hierarchy the probe itself just made in a mount
  namespace of its own, with a path that does not exist, and no cgroup is ever released in it;
- TIOCSTI goes to a pseudo-terminal the test made, never to a real one.

Each sandbox's state lives in a private state directory (``ISOLATE_STATE_DIR``), and the
programs inside are the host's python3 and coreutils: the built-in host image for ``isolate
run`` and ``isolate exec``, a busybox root with the host's /usr bound read-only for
``isolate-oci``.  isolate has no ``isolate cp`` yet: the copy attacks (2018-15664, 2019-14271)
are tried against what copies today (volume setup, ``image from-dir``, image unpacking); ``isolate
cp`` joins them when it lands.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from support.commands import require
from support.host import reap_children

import isolate
from isolate.oci.template import default_config

REPO = Path(isolate.__file__).resolve().parents[1]
REAL_PYTHON = os.path.realpath(sys.executable)
FRONT_ENDS = ["run", "exec", "oci"]
TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------------
# The runtimes under test: copies of the interpreter, so that a handle on "the runtime's binary"
# is a handle on a file this test owns.


class Runtime(NamedTuple):
    python: str
    isolate: str
    oci: str

    def identity(self) -> tuple[int, int]:
        st = os.stat(self.python)
        return st.st_dev, st.st_ino


def make_runtime(top: Path) -> Runtime:
    """A virtual environment whose interpreter is a copied file, with isolate's two commands."""
    bin_dir = top / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / os.path.basename(REAL_PYTHON)
    shutil.copy2(REAL_PYTHON, python)
    (top / "pyvenv.cfg").write_text(f"home = {os.path.dirname(REAL_PYTHON)}\ninclude-system-site-packages = false\n")
    site = top / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    # isolate (installed editable) and its dependencies, from the environment running the tests
    (site / "isolate-under-test.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    for name in ("isolate", "isolate-oci"):
        body = (REPO / "bin" / name).read_text().split("\n", 1)[1]
        (bin_dir / name).write_text(f"#!{python}\n{body}")
        (bin_dir / name).chmod(0o755)
    return Runtime(str(python), str(bin_dir / "isolate"), str(bin_dir / "isolate-oci"))


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Host:
    """The two runtimes, their private state, and the commands that drive them."""

    def __init__(self, base: Path, busybox_root: Path) -> None:
        self.base = base
        self.front = make_runtime(base / "front")  # runs the front end under test
        self.monitor = make_runtime(base / "monitor")  # starts detached sandboxes: their monitor and init
        self.busybox_root = busybox_root
        self.state = base / "state"
        self.oci_root = base / "oci-state"
        self.env = {**os.environ, "ISOLATE_STATE_DIR": str(self.state)}
        self.checksums = self.binaries_checksums()

    def binaries_checksums(self) -> dict[str, str]:
        return {path: sha256(path) for path in (self.front.python, self.monitor.python, REAL_PYTHON)}

    def runtime_identities(self) -> list[tuple[int, int]]:
        return [self.front.identity(), self.monitor.identity()]

    def isolate(self, *args: str, monitor: bool = False, timeout: float = TIMEOUT,
                **kw: Any) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        binary = self.monitor.isolate if monitor else self.front.isolate
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in kw:
            kw["capture_output"] = True
        return subprocess.run([binary, *args], env=self.env, timeout=timeout, **kw)

    def oci(self, *args: str, timeout: float = TIMEOUT, stdio: Any = None) -> subprocess.CompletedProcess[str]:
        """isolate-oci with its output in files: a created container keeps create's stdout and
        stderr, so reading pipes to their end would wait for the container."""
        import tempfile

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            done = subprocess.run([self.front.oci, "--root", str(self.oci_root), *args], env=self.env,
                                  stdin=subprocess.DEVNULL, stdout=stdio or out, stderr=stdio or err,
                                  timeout=timeout)  # fmt: skip
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read().decode(), err.read().decode())

    def wait_monitor_gone(self) -> None:
        from isolate.detached.monitor import socket_path

        deadline = time.monotonic() + 15
        while os.path.exists(socket_path(str(self.state))) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, busybox_root: Path) -> Iterator[Host]:
    made = Host(tmp_path_factory.mktemp("escapes"), busybox_root)
    probe = subprocess.run([made.front.python, "-c", "import isolate, click, sys; print(sys.prefix)"],
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode == 0, f"the runtime copy does not start: {probe.stderr}"
    yield made
    made.wait_monitor_gone()
    assert made.binaries_checksums() == made.checksums, "a runtime binary changed"


@pytest.fixture()
def outside(tmp_path: Path) -> Iterator[Path]:
    """A host directory the attacks aim at, with a canary; checked unchanged after the test."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "canary").write_text("host canary " + os.urandom(8).hex())
    before = snapshot(target)
    yield target
    assert snapshot(target) == before, f"the directory outside the sandbox changed: {before} -> {snapshot(target)}"


def snapshot(top: Path) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = "dir" if os.path.isdir(path) else Path(path).read_text(errors="replace")
    return found


# ----------------------------------------------------------------------------------------------
# The three front ends: a long-lived sandbox to attack (a detached one for exec, a container for
# the OCI runtime) and the way to run a command in it.


@contextlib.contextmanager
def box(host: Host, *command: str, options: tuple[str, ...] = (), by_front: bool = False) -> Iterator[str]:
    """A detached sandbox (``isolate run -d``) running ``command``; removed on the way out."""
    name = "cve-" + os.urandom(4).hex()
    started = host.isolate("run", "-d", "--name", name, *options, "--", *command, monitor=not by_front)
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        host.isolate("rm", "-f", name, monitor=True)
        host.wait_monitor_gone()


class Container(NamedTuple):
    id: str
    bundle: Path
    rootfs: Path


def bundle(host: Host, args: list[str], mounts: list[dict[str, Any]] | None = None,
           **process: Any) -> tuple[Path, Path]:  # fmt: skip
    """A bundle: a writable copy of the busybox root, the host's /usr bound read-only (python3)."""
    top = host.base / f"bundle-{os.urandom(4).hex()}"
    rootfs = top / "rootfs"
    shutil.copytree(host.busybox_root, rootfs, symlinks=True)
    for name in ("lib", "lib64"):
        if os.path.isdir(f"/usr/{name}"):
            os.symlink(f"usr/{name}", rootfs / name)
    config = default_config(args, rootfs=str(rootfs))
    config["root"]["readonly"] = False
    config["process"].update(process)
    config["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                             "options": ["rbind", "ro", "nosuid", "nodev"]})  # fmt: skip
    config["mounts"] += mounts or []
    (top / "config.json").write_text(json.dumps(config))
    return top, rootfs


def bind(source: Path | str, destination: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": str(source), "options": ["rbind"]}


@contextlib.contextmanager
def container(host: Host, args: list[str], mounts: list[dict[str, Any]] | None = None, start: bool = True,
              **process: Any) -> Iterator[Container]:  # fmt: skip
    """An OCI container made by ``isolate-oci create`` (and ``start``); deleted on the way out."""
    top, rootfs = bundle(host, args, mounts, **process)
    cid = "cve-" + os.urandom(4).hex()
    with open(top / "output", "wb") as output:
        created = host.oci("create", "--bundle", str(top), cid, stdio=output)
    assert created.returncode == 0, (top / "output").read_text()
    try:
        if start:
            started = host.oci("start", cid)
            assert started.returncode == 0, started.stderr
        yield Container(cid, top, rootfs)
    finally:
        host.oci("delete", "--force", cid)
        reap_children()


def wait_for(path: Path, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> bool:
    """True once ``path`` exists; False if ``proc`` ended first (or the time ran out)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return path.exists()
        time.sleep(0.02)
    return True


def popen_output(proc: subprocess.Popen[bytes]) -> str:
    out, err = proc.communicate(timeout=TIMEOUT)
    return f"exit {proc.returncode}; stdout: {out.decode(errors='replace')}; stderr: {err.decode(errors='replace')}"


# ----------------------------------------------------------------------------------------------
# CVE-2019-5736: the runtime's binary overwritten through /proc/self/exe.

# Waits in the sandbox for a process whose binary is the runtime's, keeps a descriptor of every
# /proc/PID/exe it can open, and once told ("go", when no runtime process is left to hold the
# binary busy) tries to open each for writing, as the exploit does.  It never writes a byte.
EXE_WATCHER = r"""
import json, os, sys, time
shared = sys.argv[1]
held = {"self": int(sys.argv[2])} if len(sys.argv) > 2 else {}
denied = {}
me = os.getpid()
open(shared + "/ready", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(shared + "/go") and time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and entry not in held:
            try:
                held[entry] = os.open(f"/proc/{entry}/exe", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                denied[entry] = exc.errno
report = {"denied": denied, "held": {}}
for who, fd in held.items():
    st = os.fstat(fd)
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC))  # opened, never written
        opened = 0
    except OSError as exc:
        opened = exc.errno
    link = os.readlink(f"/proc/self/fd/{fd}")
    report["held"][who] = {"dev": st.st_dev, "ino": st.st_ino, "write_open": opened, "link": link}
with open(shared + "/result.tmp", "w") as f:
    json.dump(report, f)
os.rename(shared + "/result.tmp", shared + "/result.json")  # whole, when the test sees it
"""

# The malicious command, as an image or a compromised container would hold it.  Exec'd by the
# runtime, the kernel runs its interpreter, /proc/self/exe: the runtime's own binary.
EVIL_EXEC = "#!/proc/self/exe -cimport time;time.sleep(1)\n"
# The same as the first process of a sandbox: the runtime's binary, running in the sandbox,
# keeps a descriptor of itself and becomes the watcher (which then holds it).
EVIL_FIRST = ("#!/proc/self/exe -cimport os;fd=os.open('/proc/self/exe',os.O_RDONLY);os.set_inheritable(fd,True);"
              "os.execv('/usr/bin/python3',['python3','/shared/watcher.py','/shared',str(fd)])\n")  # fmt: skip


def write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def check_exe_handles(host: Host, shared: Path, attempt: str) -> None:
    """The watcher's report: no descriptor of either runtime copy; the host's python only read-only."""
    result = shared / "result.json"
    if not result.exists():
        return  # the watcher never ran: the runtime refused to exec its own binary (checked by the caller)
    report = json.loads(result.read_text())
    runtimes = {tuple(i) for i in host.runtime_identities()}
    real = os.stat(REAL_PYTHON)
    for who, held in report["held"].items():
        ident = (held["dev"], held["ino"])
        opened = "succeeded" if held["write_open"] == 0 else errno.errorcode.get(held["write_open"], held["write_open"])
        assert ident not in runtimes, (
            f"{attempt}: the sandbox holds the runtime's binary {held['link']} (from {who}); opening it for "
            f"writing {opened}"
        )
        if ident == (real.st_dev, real.st_ino):  # the host image's own python3, bound read-only
            assert held["write_open"] == errno.EROFS, f"{attempt}: the host's python opened for writing: {opened}"
    for name in ("ready", "go", "result.json"):
        (shared / name).unlink(missing_ok=True)


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2019_5736_runtime_binary_cannot_be_overwritten(front: str, host: Host, tmp_path: Path) -> None:
    """CVE-2019-5736: a sandbox overwrites the runtime's binary through /proc/self/exe.

    The runtime execs a command whose interpreter is ``/proc/self/exe``, so its own binary runs
    in the sandbox; a process there keeps a descriptor of it (/proc/PID/exe) and, once no runtime
    process holds the binary busy, opens it for writing.  Tried on the first process of a sandbox
    (``isolate run``, ``isolate-oci create``/``start``) and on ``isolate exec`` / ``isolate-oci
    exec``, whose binary here is another copy than the monitor's (as after an upgrade of the
    interpreter), so nothing holds it busy once the exec is over.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    write_script(shared / "watcher.py", EXE_WATCHER)
    write_script(shared / "evil-exec", EVIL_EXEC)
    write_script(shared / "evil-first", EVIL_FIRST)

    if front == "run":
        # The sandbox's first process: the supervisor (a runtime process) lives as long as the
        # sandbox, so only the handle itself can be checked, not the write.
        proc = subprocess.Popen([host.front.isolate, "run", "-v", f"{shared}:/shared", "--", "/shared/evil-first"],
                                env=host.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        if wait_for(shared / "ready", proc):
            time.sleep(0.3)
            (shared / "go").touch()
        detail = popen_output(proc)
        check_exe_handles(host, shared, f"isolate run -- /shared/evil-first ({detail})")
        assert proc.returncode != 0, f"the runtime's binary ran as the sandbox's command: {detail}"
    elif front == "exec":
        with box(host, "python3", "/shared/watcher.py", "/shared", options=("-v", f"{shared}:/shared")) as name:
            assert wait_for(shared / "ready"), "the watcher did not start"
            done = host.isolate("exec", name, "/shared/evil-exec")
            (shared / "go").touch()
            assert wait_for(shared / "result.json"), "the watcher did not report"
            check_exe_handles(host, shared, f"isolate exec {name} /shared/evil-exec ({done})")
    else:
        # create/start: the container's first process is the malicious command
        mounts = [bind(shared, "/shared")]
        with container(host, ["/shared/evil-first"], mounts, start=False) as c:
            started = host.oci("start", c.id)
            if wait_for(shared / "ready", timeout=5):
                time.sleep(0.3)
                (shared / "go").touch()
                assert wait_for(shared / "result.json"), "the watcher did not report"
            check_exe_handles(host, shared, f"isolate-oci start ({started})")
        # exec into a running container
        with container(host, ["python3", "/shared/watcher.py", "/shared"], mounts) as c:
            assert wait_for(shared / "ready"), "the watcher did not start"
            done_oci = host.oci("exec", c.id, "/shared/evil-exec")
            (shared / "go").touch()
            assert wait_for(shared / "result.json"), "the watcher did not report"
            check_exe_handles(host, shared, f"isolate-oci exec ({done_oci})")
    assert host.binaries_checksums() == host.checksums


# ----------------------------------------------------------------------------------------------
# CVE-2024-21626: a descriptor the runtime leaked, used as the working directory.

FD_PROBE = r"""
import json, os, sys
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass  # listdir's own, closed by now
try:
    cwd = os.getcwd()
except OSError as exc:
    cwd = f"unreachable ({exc.strerror})"
reached = []
for up in range(1, 16):  # the exploit's ../../../ climb to the host's root
    try:
        with open("../" * up + sys.argv[1].lstrip("/")) as f:
            reached.append(f.read())
    except OSError:
        pass
print(json.dumps({"fds": fds, "cwd": cwd, "proc_cwd": os.readlink("/proc/self/cwd"), "reached": reached}))
"""


def check_fd_probe(done: subprocess.CompletedProcess[Any], attempt: str, stdio_only: bool = True) -> None:
    out = done.stdout.decode() if isinstance(done.stdout, bytes) else done.stdout
    err = done.stderr.decode() if isinstance(done.stderr, bytes) else done.stderr
    if done.returncode != 0:
        # refused: the runtime says why in one line (runc's "current working directory is outside")
        assert err.strip() and "Traceback" not in err, f"{attempt}: {err}"
        return
    report = json.loads(out.strip().splitlines()[-1])
    assert report["reached"] == [], f"{attempt}: the host's canary was read from {report['proc_cwd']}"
    assert not report["cwd"].startswith("unreachable"), f"{attempt}: the working directory is outside the root"
    if stdio_only:
        assert sorted(report["fds"]) == ["0", "1", "2"], f"{attempt}: descriptors leaked: {report['fds']}"


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2024_21626_no_leaked_descriptor_and_cwd_stays_inside(front: str, host: Host, outside: Path) -> None:
    """CVE-2024-21626: runc leaked a descriptor of a host directory into the container's process,
    and ``--cwd /proc/self/fd/N`` (or an image's WorkingDir) made it the working directory, from
    which ``../../..`` is the host's root.  The sandbox's process holds only 0, 1 and 2; every
    working directory /proc/self/fd/N is refused or stays inside the root."""
    canary = str(outside / "canary")
    probe = ["python3", "-c", FD_PROBE, canary]
    if front == "run":
        check_fd_probe(host.isolate("run", "--", *probe), "isolate run")
        for n in range(3, 13):
            check_fd_probe(host.isolate("run", "-w", f"/proc/self/fd/{n}", "--", *probe), f"isolate run -w fd {n}")
    elif front == "exec":
        with box(host, "sleep", "1000") as name:
            check_fd_probe(host.isolate("exec", name, *probe), "isolate exec")
            for n in range(3, 13):
                done_exec = host.isolate("exec", "-w", f"/proc/self/fd/{n}", name, *probe)
                check_fd_probe(done_exec, f"isolate exec -w /proc/self/fd/{n}")
    else:
        for cwd in ["/", *(f"/proc/self/fd/{n}" for n in range(3, 13))]:  # create: the first process
            top, _ = bundle(host, probe, cwd=cwd)
            done_oci = host.oci("run", "--bundle", str(top), "cve-" + os.urandom(4).hex())
            reap_children()
            check_fd_probe(done_oci, f"isolate-oci run (process.cwd {cwd})")
        with container(host, ["sleep", "1000"]) as c:
            check_fd_probe(host.oci("exec", c.id, *probe), "isolate-oci exec")
            for n in range(3, 13):
                done_oci = host.oci("exec", "--cwd", f"/proc/self/fd/{n}", c.id, *probe)
                check_fd_probe(done_oci, f"isolate-oci exec --cwd /proc/self/fd/{n}")


# ----------------------------------------------------------------------------------------------
# Racing a symlink swap: a sandbox (the attacker, "another container sharing the volume")
# exchanges a directory and a symlink to a host directory, RENAME_EXCHANGE in a tight loop, while
# the runtime works in the tree (mounts into it, creates in it, copies out of it).

SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b, stop = (p.encode() for p in sys.argv[1:4])
open(sys.argv[3] + ".ready", "w").close()
while not os.path.exists(stop):
    for _ in range(500):
        libc.renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE
"""


@contextlib.contextmanager
def swapping(host: Host, shared: Path, outside: Path, front: str = "monitor") -> Iterator[None]:
    """``shared/sub`` (a directory) and ``shared/link`` (a symlink to ``outside``) swapped in a loop
    by a sandbox that has ``shared`` at /x, started by the front end ``front``."""
    (shared / "sub").mkdir(exist_ok=True)
    os.symlink(outside, shared / "link")
    stop = shared / "stop"
    argv = ["python3", "-c", SWAPPER, "/x/sub", "/x/link", "/x/stop"]
    with contextlib.ExitStack() as stack:
        if front in ("monitor", "exec"):
            name = stack.enter_context(box(host, *(argv if front == "monitor" else ["sleep", "1000"]),
                                           options=("-v", f"{shared}:/x")))  # fmt: skip
            if front == "exec":
                proc = subprocess.Popen([host.front.isolate, "exec", name, *argv], env=host.env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
                stack.callback(proc.wait, TIMEOUT)
        elif front == "run":
            proc = subprocess.Popen([host.front.isolate, "run", "-v", f"{shared}:/x", "--", *argv], env=host.env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
            stack.callback(proc.wait, TIMEOUT)
        else:
            stack.enter_context(container(host, argv, [bind(shared, "/x")]))
        stack.callback(stop.touch)  # runs first: the swapper ends, then what runs it
        assert wait_for(Path(str(stop) + ".ready")), "the swapper did not start"
        yield
    for name in ("stop", "stop.ready"):
        (shared / name).unlink(missing_ok=True)


def mounted_from(mountinfo: str, source: Path) -> list[str]:
    """Where the bind mount of ``source`` (a directory named uniquely) lies in a mountinfo."""
    return [line.split()[4] for line in mountinfo.splitlines() if line.split()[3].endswith("/" + source.name)]


def race_volume(front: str, host: Host, tmp_path: Path, outside: Path, target: str, rounds: int) -> list[str]:
    """Start sandboxes with ``shared`` at /data and a volume at ``target`` (below /data/sub, the
    path being swapped) while the swap runs; each must fail cleanly or have the volume mounted
    inside its root.  ``exec`` mounts nothing itself: there the sandbox is started with ``run
    -d`` (the monitor's start path) and looked at through ``exec``.  Returns what each round saw."""
    shared = tmp_path / "shared"
    shared.mkdir()
    volume = tmp_path / f"volume-{os.urandom(4).hex()}"
    volume.mkdir()
    (volume / "inside").write_text("the volume")
    seen = []
    with swapping(host, shared, outside):
        for i in range(rounds):
            where = target.replace("{i}", str(i))
            show = ["cat", "/proc/self/mountinfo"]
            if front == "run":
                done = host.isolate("run", "-v", f"{shared}:/data", "-v", f"{volume}:{where}", "--", *show)
                out, ok, err = done.stdout.decode(), done.returncode == 0, done.stderr.decode()
            elif front == "exec":
                name = "cve-" + os.urandom(4).hex()
                started = host.isolate("run", "-d", "--name", name, "-v", f"{shared}:/data", "-v",
                                       f"{volume}:{where}", "--", "sleep", "1000")  # fmt: skip
                ok, err, out = False, started.stderr.decode(), ""
                if started.returncode == 0:
                    try:
                        done = host.isolate("exec", name, *show)
                        out, ok, err = done.stdout.decode(), done.returncode == 0, done.stderr.decode()
                    finally:
                        host.isolate("rm", "-f", name)
            else:
                mounts = [bind(shared, "/data"), bind(volume, where)]
                top, _ = bundle(host, show, mounts)
                done_oci = host.oci("run", "--bundle", str(top), "cve-" + os.urandom(4).hex())
                reap_children()
                out, ok, err = done_oci.stdout, done_oci.returncode == 0, done_oci.stderr
                shutil.rmtree(top)
            if not ok:
                assert err.strip() and "Traceback" not in err, f"round {i}: {err}"
                seen.append("refused: " + err.strip().splitlines()[-1])
                continue
            points = mounted_from(out, volume)
            assert points, f"round {i}: the volume for {where} was mounted outside the sandbox's root"
            seen.append(points[0])
    assert any(not s.startswith("refused") for s in seen), f"no sandbox started while the swap ran: {seen}"
    return seen


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2021_30465_mount_target_swapped_for_a_symlink(front: str, host: Host, tmp_path: Path,
                                                            outside: Path) -> None:  # fmt: skip
    """CVE-2021-30465: runc resolved a mount's target inside the root, then mounted on the path;
    a container sharing a volume swapped a component for a symlink in between, and the mount
    landed outside the root.  Here /data is a volume another sandbox swaps /data/sub in (for a
    symlink to a host directory the test owns), and a second volume is mounted at /data/sub."""
    rounds = {"run": 30, "exec": 12, "oci": 30}[front]
    seen = race_volume(front, host, tmp_path, outside, "/data/sub", rounds)
    assert len(seen) == rounds


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2018_15664_symlink_swapped_while_the_runtime_creates(front: str, host: Host, tmp_path: Path,
                                                                  outside: Path) -> None:  # fmt: skip
    """CVE-2018-15664 (docker cp): the runtime, as root on the host, wrote into a tree the container
    controls while the container swapped a directory for a symlink, and the write landed on the
    host.  The copies into a sandbox isolate makes today are its volume setup (the target made
    when missing, then mounted): a volume's missing target /data/sub/made-N is created while
    another sandbox swaps /data/sub for a symlink to a host directory; nothing may appear there.
    ``isolate cp`` joins this test when it lands."""
    rounds = {"run": 30, "exec": 12, "oci": 30}[front]
    seen = race_volume(front, host, tmp_path, outside, "/data/sub/made-{i}", rounds)
    assert len(seen) == rounds


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2019_14271_copy_out_of_a_live_sandbox(front: str, host: Host, tmp_path: Path, outside: Path) -> None:
    """CVE-2019-14271 / CVE-2018-15664 the other way (docker cp out of a running container): the
    copy followed a symlink the container swapped in, and host files went into the copy.  The
    copy out of a sandbox's tree isolate makes today is ``isolate image from-dir``: a sandbox
    (started by each front end) swaps sub/ of its volume for a symlink to a host directory while
    the volume is made into an image; no image may hold the host's file.  ``isolate cp`` joins
    this test when it lands."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "sub").mkdir()
    (shared / "sub" / "canary").write_text("the sandbox's own file")
    store = tmp_path / "store"
    secret = (outside / "canary").read_bytes()
    made = 0
    with swapping(host, shared, outside, front):
        for i in range(15):
            done = host.isolate("image", "--root", str(store), "from-dir", str(shared), f"copy-{i}")
            if done.returncode != 0:
                assert done.stderr.strip() and b"Traceback" not in done.stderr, done.stderr
                continue
            made += 1
    for dirpath, _, filenames in os.walk(store):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    assert secret not in f.read(), f"the host's canary was copied into the image store: {path}"
    assert made > 0, "no copy succeeded while the sandbox ran"


# ----------------------------------------------------------------------------------------------
# Image unpacking: an image's symlinks must never send a write, or a read, to the host.


def _layer(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                tar.addfile(entry[0], io.BytesIO(entry[1]))
            else:
                tar.addfile(entry)
    return buf.getvalue()


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def _busybox_layer(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name)
    return buf.getvalue()


def oci_layout(path: Path, layers: list[bytes], config: dict[str, Any]) -> Path:
    """An OCI image layout directory holding ``layers`` (uncompressed) and ``config``."""

    def blob(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "blobs" / "sha256" / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    machine = os.uname().machine
    document = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(document).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(x)} for x in layers],
    }
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **blob(json.dumps(manifest).encode())}]}  # fmt: skip
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize("front", ["run", "exec"])
def test_cve_2019_14271_image_symlinks_stay_in_the_image(front: str, host: Host, tmp_path: Path,
                                                         outside: Path) -> None:  # fmt: skip
    """CVE-2019-14271 (docker cp loaded the container's own libraries into a host process) and the
    image side of CVE-2018-15664: the runtime acting on the host must not follow the image's
    symlinks out of it.  Unpacking: a directory replaced by a symlink to a host directory, then a
    file written through it, in one layer and across layers, and a hard link to a host file.  The
    image's USER looked up through an /etc that is a symlink to a host directory holding a passwd
    file.  Then the image runs (``isolate run --image``, ``isolate exec`` into a sandbox of it):
    nothing of the host shows.  (isolate-oci takes a root filesystem, not an image: it unpacks
    nothing.)"""
    store = tmp_path / "store"
    host_etc = tmp_path / "host-etc"  # what the image's /etc links to: a passwd file of the host's
    host_etc.mkdir()
    (host_etc / "passwd").write_text("evil:x:4242:4242::/:/bin/sh\n")
    hostile = [
        _layer([_dir("swap"), _link("swap", str(outside)), _file("swap/written-through", b"layer 1")]),
        _layer([_link("up", "../../../../../../../.." + str(outside)), _file("up/written-up", b"layer 2")]),
        _layer([_link("across", str(outside))]),
        _layer([_file("across/written-across", b"layer 4")]),
        _layer([_link("hard", str(outside / "canary"), hard=True)]),
        _layer([_link("etc", str(host_etc))]),
    ]
    refused = []
    usable = [_busybox_layer(host.busybox_root)]
    for n, layer in enumerate(hostile):
        layout = oci_layout(tmp_path / f"layout-{n}", [*usable, layer], {"Cmd": ["sh"]})
        done = host.isolate("image", "--root", str(store), "import", str(layout), "--name", f"hostile-{n}")
        if done.returncode != 0:
            assert done.stderr.startswith(b"isolate: ") and len(done.stderr.splitlines()) == 1, done.stderr
            refused.append(n)
        else:
            usable.append(layer)
    # What imported runs: the host's canary and the files meant for outside must not show
    layout = oci_layout(tmp_path / "layout-all", usable, {"Cmd": ["sh"], "User": "evil"})
    imported = host.isolate("image", "--root", str(store), "import", str(layout), "--name", "hostile")
    assert imported.returncode == 0, imported.stderr
    look = ["sh", "-c", "id -u; cat /swap/* /up/* /across/* /hard /etc/canary 2>/dev/null; true"]
    secret = (outside / "canary").read_bytes()
    for user in ((), ("-u", "0")):  # the image's USER, then root: the look runs at least once
        image = ("--root", str(store), "--image", "hostile", *user)
        if front == "run":
            done = host.isolate("run", *image, "--", *look)
        else:
            name = "cve-" + os.urandom(4).hex()
            done = host.isolate("run", "-d", "--name", name, *image, "--", "sleep", "1000")
            if done.returncode == 0:
                try:
                    done = host.isolate("exec", name, *look)
                finally:
                    host.isolate("rm", "-f", name)
                    host.wait_monitor_gone()
        assert secret not in done.stdout, f"the host's canary is in the image: {done.stdout!r}"
        assert b"4242" not in done.stdout, "the image's USER was looked up in the host's passwd file"
        if user:
            assert done.returncode == 0, done.stderr
        elif done.returncode != 0:  # "evil" is in none of the image's own files: refused in one line
            assert done.stderr.startswith(b"isolate: ") and b"evil" in done.stderr, done.stderr


# ----------------------------------------------------------------------------------------------
# CVE-2022-0492: writing a cgroup v1 release_agent, which the host's kernel runs as root.

CGROUP_PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
name = sys.argv[1]
out = {"visible": {}, "mount": {}, "userns": {}}

def err(ret):
    return 0 if ret >= 0 else ctypes.get_errno()

def try_open(path):  # opened for writing and closed: nothing is written
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        return 0
    except OSError as exc:
        return exc.errno

for top, _, files in os.walk("/sys/fs/cgroup"):
    if "release_agent" in files:
        out["visible"][top] = try_open(top + "/release_agent")
os.makedirs("/tmp/cg", exist_ok=True)
for options in (f"none,name={name}", "memory", "rdma"):
    out["mount"][options] = err(libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, options.encode()))
    if out["mount"][options] == 0:
        out["mount"][options + " release_agent"] = try_open("/tmp/cg/release_agent")
        libc.umount2(b"/tmp/cg", 2)

# unshare -U -C -m, then a cgroup v1 hierarchy of its own: the published exploit
r, w = os.pipe()
if os.fork() == 0:
    res = {}
    try:
        res["unshare_user"] = err(libc.unshare(0x10000000))
        if res["unshare_user"] == 0:
            for f, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
                try:
                    with open(f"/proc/self/{f}", "w") as fh:
                        fh.write(text)
                except OSError as exc:
                    res[f] = exc.errno
            res["unshare_ns"] = err(libc.unshare(0x00020000 | 0x02000000))
            libc.mount(None, b"/", None, 0x4000 | 0x40000, None)  # MS_REC | MS_PRIVATE
            for options in (f"none,name={name}", "memory"):
                res[options] = err(libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, options.encode()))
                if res[options] == 0:
                    agent = "/tmp/cg/release_agent"
                    if options.startswith("none,name=") and os.path.exists(agent):
                        # a hierarchy made just now, in this namespace: a path that does not
                        # exist, and no cgroup is ever released in it
                        try:
                            with open(agent, "w") as fh:
                                fh.write("/nonexistent-isolate-cve-2022-0492")
                            res[options + " write"] = 0
                            with open(agent, "w") as fh:
                                fh.write("\n")
                        except OSError as exc:
                            res[options + " write"] = exc.errno
                    elif os.path.exists(agent):
                        res[options + " open"] = try_open(agent)
                    libc.umount2(b"/tmp/cg", 2)
    finally:
        os.write(w, json.dumps(res).encode())
        os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
os.wait()
out["userns"] = json.loads(data or b"{}")
print(json.dumps(out))
"""

REFUSED = {errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOENT}


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2022_0492_no_release_agent_can_be_written(front: str, host: Host) -> None:
    """CVE-2022-0492: a process in a container mounted a cgroup v1 hierarchy (after ``unshare -U -C
    -m``, or directly with CAP_SYS_ADMIN) and wrote its release_agent, which the kernel runs as the
    host's root.  Every release_agent the sandbox can see is read-only to it; it cannot mount a
    cgroup v1 hierarchy; through a user namespace, when one is allowed at all, the kernel's own
    check refuses the write (Linux 5.17)."""
    probe = ["python3", "-c", CGROUP_PROBE, "isolate-cve-" + os.urandom(4).hex()]
    if front == "run":
        done = host.isolate("run", "--", *probe)
        out, err = done.stdout.decode(), done.stderr.decode()
    elif front == "exec":
        with box(host, "sleep", "1000") as name:
            done = host.isolate("exec", name, *probe)
        out, err = done.stdout.decode(), done.stderr.decode()
    else:
        with container(host, ["sleep", "1000"]) as c:
            done_oci = host.oci("exec", c.id, *probe)
        done_run = host.oci("run", "--bundle", str(bundle(host, probe)[0]), "cve-" + os.urandom(4).hex())
        reap_children()
        assert done_run.returncode == 0, done_run.stderr
        check_cgroup_probe(json.loads(done_run.stdout.strip().splitlines()[-1]), "isolate-oci run")
        out, err = done_oci.stdout, done_oci.stderr
    assert out.strip(), err
    check_cgroup_probe(json.loads(out.strip().splitlines()[-1]), front)


def check_cgroup_probe(report: dict[str, Any], where: str) -> None:
    for path, opened in report["visible"].items():
        assert opened in REFUSED, f"{where}: {path}/release_agent opened for writing"
    for options, result in report["mount"].items():
        assert result in REFUSED, f"{where}: mount -t cgroup -o {options} succeeded"
    userns = report["userns"]
    for key, result in userns.items():
        if key.endswith((" write", " open")):
            assert result in REFUSED, f"{where}: in a user namespace, {key} of release_agent succeeded"


# ----------------------------------------------------------------------------------------------
# CVE-2016-9962: the runtime's process, while it joins the sandbox to exec a command there.

PTRACE_WATCHER = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_DETACH = 0x4206, 17
shared, runtimes, comms = sys.argv[1], {tuple(x) for x in json.loads(sys.argv[2])}, set(json.loads(sys.argv[3]))
me = os.getpid()
report = {"seen": {}, "reached": []}
open(shared + "/ready", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(shared + "/go") and time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            st = os.stat(f"/proc/{entry}/exe")  # needs ptrace access (PTRACE_MODE_READ)
        except OSError:
            if comm in comms:
                report["seen"][comm] = report["seen"].get(comm, 0) + 1
            continue
        if (st.st_dev, st.st_ino) not in runtimes:
            continue
        hit = {"pid": entry, "comm": comm}
        try:
            hit["fds"] = {fd: os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")}
        except OSError as exc:
            hit["fds"] = exc.errno
        ret = libc.ptrace(PTRACE_SEIZE, int(entry), None, None)  # does not stop it; detached at once
        hit["seize"] = 0 if ret == 0 else ctypes.get_errno()
        if ret == 0:
            libc.ptrace(PTRACE_DETACH, int(entry), None, None)
        report["reached"].append(hit)
with open(shared + "/result.tmp", "w") as f:
    json.dump(report, f)
os.rename(shared + "/result.tmp", shared + "/result.json")  # whole, when the test sees it
"""


def check_ptrace_report(shared: Path, attempt: str, comm: str) -> None:
    assert wait_for(shared / "result.json"), f"{attempt}: the watcher did not report"
    report = json.loads((shared / "result.json").read_text())
    assert report["reached"] == [], f"{attempt}: a runtime process was reachable from the sandbox: {report['reached']}"
    assert report["seen"].get(comm), f"{attempt}: the watcher never saw the runtime's process ({report['seen']})"


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2016_9962_runtime_process_out_of_reach(front: str, host: Host, tmp_path: Path) -> None:
    """CVE-2016-9962: runc's process joining the container to exec a command there was visible in
    the container, ptrace-able, with host descriptors open.  A watcher in the sandbox looks at
    every process it can see while the runtime's processes come and go: none of those (the
    sandbox's init of ``--init``, the exec'ing process of ``exec``, an OCI container's first
    process waiting for ``start``) may let it read /proc/PID/exe or /proc/PID/fd, or attach."""
    shared = tmp_path / "shared"
    shared.mkdir()
    write_script(shared / "watcher.py", PTRACE_WATCHER)
    ids = json.dumps(host.runtime_identities())
    comms = json.dumps(["isolate", "isolate-oci", "isolate-init", "isolate-zygote", "python3", "python3.11"])
    watcher = ["python3", "/shared/watcher.py", "/shared", ids, comms]
    if front == "run":
        proc = subprocess.Popen([host.front.isolate, "run", "--init", "-v", f"{shared}:/shared", "--", *watcher],
                                env=host.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        assert wait_for(shared / "ready", proc), popen_output(proc)
        time.sleep(0.3)
        (shared / "go").touch()
        popen_output(proc)
        check_ptrace_report(shared, "isolate run --init", "isolate-init")
    elif front == "exec":
        with box(host, *watcher, options=("-v", f"{shared}:/shared")) as name:
            assert wait_for(shared / "ready"), "the watcher did not start"
            for _ in range(20):
                done = host.isolate("exec", name, "true")
                assert done.returncode == 0, done.stderr
            (shared / "go").touch()
            check_ptrace_report(shared, "isolate exec", "isolate")
    else:
        mounts = [bind(shared, "/shared")]
        with container(host, ["sleep", "1000"], mounts, start=False) as c:  # its first process waits for start
            done_oci = host.oci("exec", "--detach", c.id, *watcher)
            assert done_oci.returncode == 0, done_oci.stderr
            assert wait_for(shared / "ready"), "the watcher did not start"
            for _ in range(20):
                done_oci = host.oci("exec", c.id, "true")
                assert done_oci.returncode == 0, done_oci.stderr
            (shared / "go").touch()
            check_ptrace_report(shared, "isolate-oci exec, and create before start", "isolate-oci")


# ----------------------------------------------------------------------------------------------
# CVE-2017-5226: TIOCSTI, pushing keystrokes into the caller's terminal.

TTY_PROBE = r"""
import fcntl, json, os, sys, termios
caller = json.loads(sys.argv[1])  # (st_dev, st_rdev) of the caller's terminal
out = {"fds": {}}
for fd in (0, 1, 2):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    entry = {"caller_tty": [st.st_dev, st.st_rdev] == caller, "tty": os.isatty(fd), "tiocsti": None}
    if entry["tty"]:
        try:
            for byte in sys.argv[2].encode():
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
            entry["tiocsti"] = 0
        except OSError as exc:
            entry["tiocsti"] = exc.errno
    out["fds"][fd] = entry
with open("/proc/self/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
out["session"] = int(fields[3])  # 0: the session's leader is outside the sandbox's pid namespace
print("REPORT" + json.dumps(out))
"""


def on_terminal(argv_for: Any, env: dict[str, str]) -> tuple[int, str]:
    """Run a command on a pseudo-terminal of its own, as its controlling terminal (``setsid
    --ctty``); ``argv_for`` gets the terminal's (st_dev, st_rdev) and returns the command.  Returns
    its status and what the terminal showed (echoed input included)."""
    master, slave = os.openpty()
    try:
        st = os.fstat(slave)
        argv = argv_for((st.st_dev, st.st_rdev))
        proc = subprocess.Popen([require("setsid"), "--ctty", "--wait", *argv], stdin=slave, stdout=slave,
                                stderr=slave, env=env)  # fmt: skip
        shown = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:
                    pass  # EIO: nobody holds the terminal any more
            elif proc.poll() is not None:
                break
        proc.wait(timeout=5)
        return proc.returncode, shown.decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)


def check_tty_probe(code: int, shown: str, canary: str, attempt: str, own_terminal: bool) -> None:
    lines = [line for line in shown.replace("\r", "").splitlines() if "REPORT{" in line]
    assert lines, f"{attempt}: no report (exit {code}): {shown}"
    report = json.loads(lines[-1].split("REPORT", 1)[1])
    for fd, entry in report["fds"].items():
        if entry["caller_tty"]:
            assert entry["tiocsti"] != 0, f"{attempt}: TIOCSTI on fd {fd}, the caller's terminal, succeeded"
        if own_terminal:
            assert not entry["caller_tty"], f"{attempt}: fd {fd} is the caller's terminal, not a pty of its own"
    assert report["session"] != 0, f"{attempt}: the sandbox is in its caller's session"
    if not own_terminal:  # the only terminal is the caller's: an injected keystroke would echo on it
        assert canary not in shown.replace(lines[-1], ""), (
            f"{attempt}: keystrokes were pushed into the caller's terminal"
        )


@pytest.mark.parametrize("front", FRONT_ENDS)
def test_cve_2017_5226_no_keystrokes_into_the_callers_terminal(front: str, host: Host, tmp_path: Path) -> None:
    """CVE-2017-5226 (bubblewrap): the sandboxed process shared its caller's session and terminal,
    and ioctl(TIOCSTI) typed commands into the caller's shell.  With a terminal (``-t``, an OCI
    console) the sandbox gets a pty of its own; without, it may inherit the caller's terminal as
    stdio but runs in a session of its own, so TIOCSTI on it is refused (EPERM; on a kernel with
    dev.tty.legacy_tiocsti=0 the kernel refuses it anyway, and the session is still checked).  The
    caller's terminal here is a pseudo-terminal the test made (``setsid --ctty``)."""
    canary = "CVEFIVETWOTWOSIX"

    def probe(caller: tuple[int, int], python: str = "python3") -> list[str]:
        return [python, "-c", TTY_PROBE, json.dumps(list(caller)), canary]

    # The control: the probe outside any sandbox, in the terminal's session, does type into it,
    # and the keystrokes show (echoed) where the test looks for them.
    code, shown = on_terminal(lambda caller: probe(caller, REAL_PYTHON), host.env)
    assert canary in shown and '"tiocsti": 0' in shown, f"the control typed nothing (exit {code}): {shown}"

    def attempt(before: list[str], own_terminal: bool, name: str) -> None:
        code, shown = on_terminal(lambda caller: [*before, *probe(caller)], host.env)
        reap_children()
        check_tty_probe(code, shown, canary, name, own_terminal)

    if front == "run":
        attempt([host.front.isolate, "run", "--"], False, "isolate run")
        attempt([host.front.isolate, "run", "-t", "--"], True, "isolate run -t")
    elif front == "exec":
        with box(host, "sleep", "1000") as name:
            attempt([host.front.isolate, "exec", "-i", name], False, "isolate exec -i")
            attempt([host.front.isolate, "exec", "-it", name], True, "isolate exec -it")
    else:
        oci = [host.front.oci, "--root", str(host.oci_root)]
        top, _ = bundle(host, ["true"])

        def oci_run(caller: tuple[int, int]) -> list[str]:
            config = json.loads((top / "config.json").read_text())
            config["process"]["args"] = probe(caller)
            (top / "config.json").write_text(json.dumps(config))
            return [*oci, "run", "--bundle", str(top), "cve-" + os.urandom(4).hex()]

        code, shown = on_terminal(oci_run, host.env)
        reap_children()
        check_tty_probe(code, shown, canary, "isolate-oci run", False)
        with container(host, ["sleep", "1000"]) as c:
            attempt([*oci, "exec", c.id], False, "isolate-oci exec")
        check_console(host, tmp_path, probe((0, 0)), canary)


def check_console(host: Host, tmp_path: Path, probe: list[str], canary: str) -> None:
    """``process.terminal``: the container's pty comes over the console socket; TIOCSTI on it
    reaches only the container's own terminal."""
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    top, _ = bundle(host, probe, terminal=True)
    cid = "cve-" + os.urandom(4).hex()
    try:
        created = host.oci("create", "--bundle", str(top), "--console-socket", path, cid)
        assert created.returncode == 0, created.stderr
        conn, _ = server.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        master = fds[0]
        host.oci("start", cid)
        shown = b""
        try:
            while chunk := os.read(master, 4096):
                shown += chunk
        except OSError:
            pass  # EIO: the container's side closed
        os.close(master)
    finally:
        server.close()
        host.oci("delete", "--force", cid)
        reap_children()
    check_tty_probe(0, shown.decode(errors="replace"), canary, "isolate-oci with a console", True)


def test_runtime_copies_are_what_runs(host: Host) -> None:
    """The attacks above aim at the copies: the front end's and the monitor's processes run them."""
    with box(host, "sleep", "1000") as name:
        listed = json.loads(host.isolate("ps", "--json", monitor=True).stdout)
        pid = next(int(r["pid"]) for r in listed if r["name"] == name)
        st = os.stat(f"/proc/{pid}/exe")
        assert (st.st_dev, st.st_ino) == host.monitor.identity(), "the detached sandbox's init is not the copy"
