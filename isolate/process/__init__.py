"""Processes: the sandbox's child is cloned, set up and supervised here.

``spawn`` clones the child into its namespaces and runs the plan's steps in it, up to the
exec; ``supervisor`` makes the cgroup, starts the child and waits for it; ``helper`` is a
small process forked early that does the same for a large caller; ``zygote`` clones
sandboxes built ahead of time (spares, the monitor's starts); ``init`` is the optional PID 1;
``terminal`` gives the sandbox a pseudo-terminal.
"""
