"""Guided labs: each primitive shown at work, with the commands that show it and a check.

The labs are data (isolate.labs.catalogue): a short text, the code it cites, and demos; a
demo is an ``isolate`` command line and a check of what it printed (isolate.labs.checks).
``isolate lab run N`` runs the demos and shows each command and its output; ``isolate lab
check N`` runs them again quietly and says, for each, whether the system behaved as the lab
says it does.  The commands are the learner's to try by hand.  This module finds, shows and
runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys

from isolate.labs.catalogue import LABS
from isolate.labs.records import Code, Demo, Lab

__all__ = ["LABS", "Code", "Demo", "Lab", "command_line", "get", "run_demo", "unavailable"]


def get(number: int) -> Lab:
    for lab in LABS:
        if lab.number == number:
            return lab
    from isolate.errors import ConfigError

    raise ConfigError(f"no lab {number}; `isolate lab list` lists them")


def command_line(demo: Demo) -> str:
    import shlex

    env = "".join(f"{name}={shlex.quote(value)} " for name, value in demo.env)
    return env + "isolate " + " ".join(shlex.quote(a) for a in demo.args)


def run_demo(demo: Demo) -> tuple[int, str, str]:
    """Run a demo with the same Python that runs isolate (``-m isolate``)."""
    env = {**os.environ, **dict(demo.env)} if demo.env else None
    proc = subprocess.run([sys.executable, "-m", "isolate", *demo.args], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def unavailable(lab: Lab) -> str | None:
    if lab.needs == "v2":
        from isolate import cgroups

        if cgroups.layout().kind != "v2":
            return "this lab needs a cgroup v2 host: run it in the Vagrant VM (vagrant ssh -c 'sudo isolate lab run N')"
    return None
