"""An interactive sandbox (``run -it``, ``exec -it``): a real pseudo-terminal, relayed.

The command gets the pty's secondary end as stdin/stdout/stderr and as its controlling
terminal (so job control, Ctrl-C and Ctrl-Z work inside, by the pty's line discipline).
The caller's own terminal goes to raw mode and every byte is copied both ways; a resize
of the caller's terminal (SIGWINCH) is copied to the pty, which signals the sandbox's
foreground job in turn.
"""

from __future__ import annotations

import _signal as signal
import errno
import fcntl
import os
import select
import socket
import struct
import termios

from isolate.plan.steps import Step

_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


def open_pty_pair(sock_fd: int, uid: int, rows: int, cols: int) -> int:
    """Open a pty in this mount namespace's /dev/ptmx, send its master over ``sock_fd``
    (then closed) with the pty's name, as runc's console socket protocol does, and return
    the secondary's descriptor."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))[0]
        name = f"/dev/pts/{number}"
        slave = os.open(name, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        if uid:
            os.fchown(slave, uid, -1)
        if rows or cols:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        sock = socket.socket(fileno=sock_fd)
        try:
            socket.send_fds(sock, [name.encode()], [master])
        finally:
            sock.close()
    finally:
        os.close(master)
    return slave


class TerminalFromSandbox(Step):
    """``run -it``: the pty comes from the sandbox's own devpts (so ``tty`` names it and the
    host's terminals stay out of reach).  stdin is a socket to isolate: the primary end goes
    back over it, the secondary becomes stdin, stdout, stderr and the controlling terminal."""

    __slots__ = ("uid", "rows", "cols")
    what = "setting up the terminal"

    def __init__(self, uid: int, rows: int, cols: int) -> None:
        self.uid = uid
        self.rows = rows
        self.cols = cols

    def apply(self, root: str) -> None:
        secondary = open_pty_pair(os.dup(0), self.uid, self.rows, self.cols)
        for target in (0, 1, 2):
            os.dup2(secondary, target, inheritable=True)
        os.close(secondary)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def shell(self, root: str) -> str:
        return "# open /dev/ptmx in the sandbox; its primary end goes to isolate, the secondary is stdio"


def terminal_size() -> tuple[int, int]:
    """(rows, columns) of the caller's terminal on stdin, or (0, 0)."""
    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    except OSError:
        return 0, 0
    return rows, cols


def with_terminal_step(steps: list[Step], uid: int) -> list[Step]:
    """The plan's steps with the terminal's set up right after the root changed."""
    from isolate.plan.steps import Chroot, PivotRoot

    at = next((i + 1 for i, step in enumerate(steps) if isinstance(step, (PivotRoot, Chroot))), len(steps))
    rows, cols = terminal_size()
    return [*steps[:at], TerminalFromSandbox(uid, rows, cols), *steps[at:]]


def receive_primary(sock: socket.socket) -> int:
    """The primary end the sandbox sent (see TerminalFromSandbox), sized like the caller's terminal."""
    _, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    if not fds:
        raise OSError(errno.EPROTO, "the sandbox sent no terminal")
    os.set_inheritable(fds[0], False)
    copy_size(fds[0])
    return fds[0]


def copy_size(primary: int) -> None:
    try:
        size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(primary, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # the caller has no terminal: keep the default size


def interact(primary: int, pidfd: int) -> None:
    """Relay the caller's terminal and the pty until the process exits and its output is drained."""
    import termios
    import tty

    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    old = signal.signal(signal.SIGWINCH, lambda *_: copy_size(primary))
    stdin_open = True
    try:
        while True:
            watch = [primary, pidfd] + ([0] if stdin_open else [])
            try:
                ready = select.select(watch, [], [])[0]
            except InterruptedError:
                continue
            if primary in ready:
                try:
                    data = os.read(primary, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO: no process has the terminal open any more
                        raise
                    data = b""
                if not data:
                    return
                os.write(1, data)
            elif pidfd in ready:
                # Exited: drain what it wrote, without blocking on a terminal that stays open
                # (a background process may still hold it; the kernel ends it with the sandbox).
                while select.select([primary], [], [], 0.05)[0]:
                    try:
                        data = os.read(primary, 65536)
                    except OSError:
                        return
                    if not data:
                        return
                    os.write(1, data)
                return
            if stdin_open and 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(primary, data)
                else:
                    stdin_open = False
    finally:
        signal.signal(signal.SIGWINCH, old)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
