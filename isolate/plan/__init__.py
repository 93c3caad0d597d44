"""The plan: what a sandbox is, as data.

A Sandbox's configuration becomes a :class:`~isolate.plan.steps.Plan`, an ordered list of
steps (``builder.build_plan``).  ``--explain`` prints that list as shell (``explain``); the
child process executes it (``isolate.process``).  Each primitive is a module of step
factories: ``mounts`` (/proc, /dev, /sys, volumes), ``overlay`` (layers), ``rootfs`` (the host
image), ``security`` (capabilities, masked paths, rlimits), ``seccomp`` (the syscall filter).
"""
