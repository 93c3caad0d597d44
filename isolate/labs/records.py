"""The records a lab is made of: a lab, its demos, and the code it points the learner to.

Frozen dataclasses, so the catalogue is plain data that compares and prints.  Dataclass
generation costs a few milliseconds per import, which matters for ``isolate run`` (see
isolate.plan.steps) but not here: only the ``isolate lab`` commands import the labs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.labs.checks import Check


@dataclass(frozen=True, init=False)
class Code:
    """Where a lab's primitive lives: a public module, and public names in it (``Class.method`` allowed)."""

    module: str
    names: tuple[str, ...]

    def __init__(self, module: str, *names: str) -> None:
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "names", names)

    def __str__(self) -> str:
        return f"{self.module} ({', '.join(self.names)})" if self.names else self.module


@dataclass(frozen=True)
class Demo:
    """An ``isolate`` command line, what it shows, and the check of what it printed."""

    args: tuple[str, ...]  # isolate's arguments
    why: str
    expect: Check  # (stdout, stderr) -> None if as the lab says, else what went wrong
    env: tuple[tuple[str, str], ...] = ()  # set for this command (shown before it, as a shell does)


@dataclass(frozen=True)
class Lab:
    number: int
    title: str
    about: str  # the explanation, without the code references (those are ``code``)
    demos: tuple[Demo, ...]
    code: tuple[Code, ...] = field(default=())
    needs: str = ""  # "v2": only on a pure cgroup v2 host

    @property
    def text(self) -> str:
        """The explanation as shown, ending with the code it cites."""
        if not self.code:
            return self.about
        return f"{self.about}\nCode: {', '.join(str(c) for c in self.code)}."
