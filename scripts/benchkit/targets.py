"""The issue's targets (#9), as data: which measured figure each reads (or which two it divides), its goal
and direction.  evaluate() sets them against one run's figures; they are measured, never asserted by the
test suite.

A figure is a path into the run's figures, {"start": {contender: stats}, "throughput": ..., "detached":
..., "images": ...} (the sections' JSON, as bench.json holds them), its keys joined by "/".  A path,
a `what` and a `basis` may name the run's parameters in braces: {top} (the most concurrent callers
measured), {nproc} (CPUs) and {n} (detached library sandboxes started).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    figure: str  # the measured figure, or the numerator of a ratio
    op: str  # "<=" (lower is better) or ">=" (higher is better)
    goal: float
    unit: str  # "x" for a ratio
    basis: str
    per: str | None = None  # the denominator: the target is figure / per
    per_usable_cpu: bool = False  # the goal is goal x min({top}, {nproc}): the speed-up callers can reach
    signed: bool = False  # a difference: shown with its sign


START = "start-latency medians"

TARGETS = (
    Target(
        id="lib_vs_crun",
        what="Sandbox.run / crun run (limits, overlay root)",
        figure="start/isolate-lib/median",
        per="start/crun/median",
        op="<=",
        goal=0.6,
        unit="x",
        basis=START,
    ),
    Target(
        id="lib_256M_vs_small",
        what="Sandbox.run from a 256 MiB caller / small caller",
        figure="start/isolate-lib-256M/median",
        per="start/isolate-lib/median",
        op="<=",
        goal=1.2,
        unit="x",
        basis=START,
    ),
    Target(
        id="cli_vs_runc",
        what="isolate run / runc run",
        figure="start/isolate-cli/median",
        per="start/runc/median",
        op="<=",
        goal=1.0,
        unit="x",
        basis=START,
    ),
    Target(
        id="sequential_runs_per_s",
        what="sequential Sandbox.run() per second",
        figure="throughput/sequential/isolate-lib/runs_per_s",
        op=">=",
        goal=200,
        unit="/s",
        basis="loop, no limits",
    ),
    Target(
        id="concurrent_speedup",
        what="{top} concurrent callers: speed-up over 1 ({nproc} CPUs)",
        figure="throughput/callers/{top}/speedup",
        op=">=",
        goal=0.8,
        per_usable_cpu=True,
        unit="x",
        basis="aggregate runs/s, prestart=False; goal 0.8 x min({top}, CPUs)",
    ),
    Target(
        id="detached_start_vs_crun",
        what="detached start / crun run -d ({n} each)",
        figure="detached/isolate-lib/start_ratio_to_crun",
        op="<=",
        goal=1.0,
        unit="x",
        basis="medians",
    ),
    Target(
        id="detached_host_memory",
        what="host memory per idle detached sandbox",
        figure="detached/isolate-lib/memory/host_per_sandbox_mib",
        op="<=",
        goal=2.0,
        unit="MiB",
        basis="MemTotal - MemAvailable",
    ),
    Target(
        id="detached_teardown_vs_crun",
        what="teardown per sandbox / crun kill+delete",
        figure="detached/isolate-lib/teardown_ratio_to_crun",
        op="<=",
        goal=1.0,
        unit="x",
        basis="medians",
    ),
    Target(
        id="gc_leaves_live_sandboxes",
        what="isolate gc beside live `run -d` sandboxes (own, another dir's): removed",
        figure="detached/isolate-cli/gc/removed",
        op="<=",
        goal=0,
        unit="lines",
        basis="count",
    ),
    Target(
        id="gc_per_sandbox_vs_crun_delete",
        what="isolate gc's time per live sandbox / crun kill+delete of one",
        figure="detached/isolate-cli/gc/per_sandbox_ratio_to_crun_teardown",
        op="<=",
        goal=0.25,
        unit="x",
        basis="one gc over all / n; crun's median",
    ),
    Target(
        id="twenty_layers",
        what="overlay start, 20 lower layers - 1 layer",
        figure="images/twenty_minus_one_ms",
        op="<=",
        goal=1.0,
        unit="ms",
        signed=True,
        basis="medians",
    ),
    Target(
        id="verify_vs_import",
        what="isolate image verify / the import it checks",
        figure="images/verify/verify_ms",
        per="images/verify/import_ms",
        op="<=",
        goal=0.5,
        unit="x",
        basis="medians, gzip layer, warm page cache (#17)",
    ),
)
BY_ID = {t.id: t for t in TARGETS}


def lookup(figures: dict[str, Any], path: str) -> float | None:
    """The number at path, or None where any step is missing (a section skipped or failed)."""
    node: Any = figures
    for key in path.split("/"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def parameters(figures: dict[str, Any], nproc: int) -> dict[str, Any]:
    callers = (figures.get("throughput") or {}).get("callers") or {}
    lib = (figures.get("detached") or {}).get("isolate-lib") or {}
    return {"top": max((int(k) for k in callers), default=None), "nproc": nproc, "n": lib.get("n", 0)}


def evaluate(figures: dict[str, Any], nproc: int) -> list[dict[str, Any]]:
    """The targets this run measured (those whose figures are all there), each with its value and whether
    the goal is met, in TARGETS' order."""
    params = parameters(figures, nproc)
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        if "{top}" in t.figure and params["top"] is None:
            continue  # no concurrent callers measured
        value = lookup(figures, t.figure.format(**params))
        if t.per is not None:
            below = lookup(figures, t.per.format(**params))
            value = value / below if value is not None and below else None
        if value is None:
            continue
        goal = t.goal * min(params["top"], nproc) if t.per_usable_cpu else t.goal
        met = value <= goal if t.op == "<=" else value >= goal
        out.append(
            {
                "id": t.id,
                "what": t.what.format(**params),
                "value": value,
                "op": t.op,
                "goal": goal,
                "unit": t.unit,
                "met": met,
                "basis": t.basis.format(**params),
            }
        )
    return out


def shown_value(target: dict[str, Any]) -> str:
    """A measured value as the targets table prints it."""
    value, unit = target["value"], target["unit"]
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "/s":
        return f"{value:.1f} /s"
    definition = BY_ID.get(target["id"])
    return f"{value:+.2f} {unit}" if definition and definition.signed else f"{value:.2f} {unit}"


def shown_goal(target: dict[str, Any]) -> str:
    unit = target["unit"]
    return f"{target['op']} {target['goal']:g}{unit if unit == 'x' else ' ' + unit}"
