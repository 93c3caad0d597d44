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
import os
import select


def open_pty() -> tuple[int, int]:
    """(primary, secondary), the secondary sized like the caller's terminal."""
    primary, secondary = os.openpty()
    os.set_inheritable(primary, False)
    copy_size(primary)
    return primary, secondary


def copy_size(primary: int) -> None:
    import fcntl
    import termios

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
