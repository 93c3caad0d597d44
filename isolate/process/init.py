"""PID 1 of a sandbox started with ``--init``: reaps orphans, relays signals (what tini does for docker).

A pid namespace's init is where every orphan goes; a command that never calls wait()
would leave them as zombies until the sandbox ends, and it would ignore every signal it has
no handler for (pid_namespaces(7)).  With ``--init`` the isolate child that built the
sandbox stays as PID 1, forks the command as PID 2 in a process group of its own, and:

- reaps every child that exits (``waitpid(-1)``), so no zombie accumulates;
- relays SIGTERM, SIGUSR1, SIGUSR2 to the command, and the terminal's SIGINT, SIGQUIT,
  SIGHUP, SIGWINCH to its process group, as a shell's job would get them;
- exits with the command's status (128 + N when a signal N ended it), which ends the
  sandbox: the kernel kills what is left in the namespace.

PID 1 forks as soon as it has joined the sandbox's cgroup (spawn.child_main): the forked
worker builds the root and execs the command, so the init, which lives as long as the
sandbox, has touched almost none of the Python memory it shares copy-on-write with its
parent (measured: ~2 MiB less private memory per idle sandbox than an init that ran the
setup itself).  pivot_root moves the root of every process of the mount namespace, the
init's too.  It imports nothing once running (see isolate.process.child).
"""

from __future__ import annotations

import _signal as signal
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

_TO_COMMAND = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_TO_GROUP = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGWINCH)


def become_init(command: int, errw: int) -> NoReturn:
    """Be PID 1 for ``command`` (our child) until it exits; never returns."""
    _set_name(b"isolate-init")
    # Only the command's copy of the error pipe may stay open: its exec closes it, and that
    # end-of-file is what tells the supervisor the sandbox started.
    os.close(errw)

    def relay(sig: int, _frame: object) -> None:
        try:
            if sig in _TO_GROUP:
                os.killpg(command, sig)
            else:
                os.kill(command, sig)
        except ProcessLookupError:
            pass

    for sig in _TO_COMMAND + _TO_GROUP:
        signal.signal(sig, relay)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == command:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def _set_name(name: bytes) -> None:
    from isolate import _libc

    try:
        _libc.prctl_set_name(name)
    except OSError:
        pass
