"""The ``isolate`` command.

``options`` parses ``isolate run`` without click (the fast path, see ``isolate.__main__``);
``run`` executes it; ``commands`` holds every click command; ``doctor`` checks the host.
Nothing here is imported by ``import isolate``.
"""
