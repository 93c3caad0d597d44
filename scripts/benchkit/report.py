"""What a run reports: the text tables printed at its end, and the JSON document of bench.json."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchkit.contenders import Contender, Library, Oci
from benchkit.latency import cgroup_warmth
from benchkit.limits import LIMIT_CPUS, LIMIT_MEMORY_MIB, LIMIT_PIDS
from benchkit.targets import shown_goal, shown_value
from benchkit.timing import stats


def fmt_table(contenders: list[Contender], crun_median: float | None) -> str:
    head = f"{'contender':<24} {'what':<42} {'runs':>5} {'min':>7} {'median':>7} {'p90':>7} {'/crun':>6}"
    lines = [head, "-" * len(head)]
    for c in contenders:
        st = stats(c.samples)
        if not st:
            lines.append(f"{c.name:<24} {c.desc:<42} {'FAILED' if c.error else 'no data':>5}")
            continue
        ratio = f"{st['median'] / crun_median:5.2f}x" if crun_median else "   n/a"
        lines.append(
            f"{c.name:<24} {c.desc:<42} {st['n']:>5} {st['min']:7.2f} {st['median']:7.2f} {st['p90']:7.2f} {ratio:>6}"
        )
    lines.append("(milliseconds; /crun = median divided by crun's median)")
    return "\n".join(lines)


def fmt_throughput(tp: dict[str, Any]) -> str:
    if "error" in tp:
        return f"throughput: FAILED: {tp['error']}"
    head = f"{'throughput':<44} {'callers':>7} {'runs':>6} {'runs/s':>8} {'med ms':>7} {'speed-up':>8} {'/crun':>6}"
    lines = [head, "-" * len(head)]
    names = {
        "isolate-lib": "Sandbox.run(), no limits",
        "isolate-lib-limits": "Sandbox.run(), limits",
        "isolate-lib-cold": "Sandbox.run(), no limits, prestart=False",
        "crun": "crun run, limits",
    }
    for key, row in tp["sequential"].items():
        ratio = f"{row['ratio_to_crun']:5.2f}x" if row.get("ratio_to_crun") else "   n/a"
        lines.append(
            f"{'sequential: ' + names.get(key, key):<44} {1:>7} {row['runs']:>6} {row['runs_per_s']:8.1f} "
            f"{row['median_ms']:7.2f} {'':>8} {ratio:>6}"
        )
    for key, row in tp["sequential"].items():
        if len(row.get("windows_runs_per_s", [])) > 1:
            rates = ", ".join(f"{r:.0f}" for r in row["windows_runs_per_s"])
            n_windows = len(row["windows_runs_per_s"])
            lines.append(f"  (sequential {key}: median of {n_windows} interleaved windows: {rates} /s)")
    for n, row in tp["callers"].items():
        lines.append(
            f"{'concurrent: ... no limits, prestart=False':<44} {n:>7} {row['runs']:>6} "
            f"{row['runs_per_s']:8.1f} {row['median_ms']:7.2f} {row['speedup']:7.2f}x {'':>6}"
        )
    for n, row in tp.get("callers_prestart", {}).items():
        lines.append(
            f"{'concurrent: Sandbox.run(), no limits':<44} {n:>7} {row['runs']:>6} {row['runs_per_s']:8.1f} "
            f"{row['median_ms']:7.2f} {'':>8} {'':>6}"
        )
    lines.append(
        f"({tp['seconds']:g} s per row; callers are separate processes, {tp['nproc']} CPUs; med ms: median "
        f"latency of one run inside the loop; /crun: runs/s divided by crun's)"
    )
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return f"{value:5.2f}x" if value else "   n/a"


def _num(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def fmt_detached(dt: dict[str, Any]) -> str:
    head = (
        f"{'detached (sleep 3600)':<24} {'n':>5} {'start min':>9} {'median':>7} {'/crun':>6} "
        f"{'host MiB':>8} {'PSS MiB':>8} {'teardown':>8} {'mean':>7} {'/crun':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, row in dt.items():
        st, td, mem = row.get("start") or {}, row.get("teardown") or {}, row.get("memory") or {}
        if not st:
            lines.append(f"{name:<24} {row.get('n', 0):>5} FAILED: {row.get('error', 'no data')}")
            continue

        lines.append(
            f"{name:<24} {st['n']:>5} {st['min']:9.2f} {st['median']:7.2f} "
            f"{_ratio(row.get('start_ratio_to_crun')):>6} "
            f"{_num(mem.get('host_per_sandbox_mib'), 8)} {_num(mem.get('pss_per_sandbox_mib'), 8)} "
            f"{_num(td.get('median'), 8)} {_num(row.get('teardown_per_sandbox_ms'), 7)} "
            f"{_ratio(row.get('teardown_ratio_to_crun')):>6}"
        )
    lines.append(
        "(ms per start and per teardown (median; mean = all teardowns' wall time / n); MiB per idle sandbox: "
        "host = change of MemTotal-MemAvailable / n,"
    )
    lines.append(
        " PSS = summed PSS of the sandboxes' processes and their non-benchmark parents (isolate's monitor) "
        "/ n; each set torn down before the next)"
    )
    for name, row in dt.items():
        lines.append(
            f"  {name}: {row.get('what', '')}"
            + (f"; {row['capped']}" if row.get("capped") else "")
            + (f"; error: {row['error']}" if row.get("error") and row.get("start") else "")
        )
    return "\n".join(lines)


def fmt_images(im: dict[str, Any]) -> str:
    if "error" in im:
        return f"images: FAILED: {im['error']}"
    lines = [f"{'overlay root from an image, Sandbox(image=...).run()':<52} {'runs':>5} {'min':>7} {'median':>7}"]
    lines.append("-" * len(lines[0]))
    for row in im["start"].values():
        label = f"{row['layers']} lower layer{'s' if row['layers'] != 1 else ''}"
        lines.append(f"{label:<52} {row['n']:>5} {row['min']:7.2f} {row['median']:7.2f}")
    lines.append(f"20 layers - 1 layer: {im['twenty_minus_one_ms']:+.2f} ms (medians; spawn=direct, no limits)")
    for label, row in im.get("import", {}).items():
        lines.append(
            f"import, {label}: tar -x {row['tar_ms']:.0f} ms, isolate {row['isolate_ms']:.0f} ms "
            f"({row['speed_vs_tar']:.2f}x tar's speed, {row['isolate_mb_per_s']:.0f} MB/s)"
        )
    return "\n".join(lines)


def fmt_targets(targets: list[dict[str, Any]]) -> str:
    head = f"{'issue #9 targets (measured in this run, not asserted)':<62} {'measured':>10} {'goal':>10} {'met':>4}"
    lines = [head, "-" * len(head)]
    for t in targets:
        lines.append(f"{t['what']:<62} {shown_value(t):>10} {shown_goal(t):>10} {'yes' if t['met'] else 'NO':>4}")
    return "\n".join(lines)


def crun_median(contenders: list[Contender]) -> float | None:
    crun = next((c for c in contenders if c.name == "crun" and c.samples), None)
    return statistics.median(crun.samples) if crun else None


def print_start_latency(contenders: list[Contender]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The start-latency table and what goes with it; (stats by contender, ratios, cgroup warm/cold split)."""
    crun = crun_median(contenders)
    by = {c.name: stats(c.samples) for c in contenders}
    ratios = {}
    if contenders:
        print()
        print(fmt_table(contenders, crun))
        small = by.get("isolate-lib", {}).get("median")
        for name in ("isolate-lib-256M", "isolate-lib-256M-direct"):
            if small and by.get(name):
                ratios[f"{name} / isolate-lib"] = by[name]["median"] / small
        if by.get("isolate-cli") and by.get("runc"):
            ratios["isolate-cli / runc"] = by["isolate-cli"]["median"] / by["runc"]["median"]
        if ratios:
            print()
            for k, v in ratios.items():
                print(f"{k}: {v:.2f}x (medians)")
    split = cgroup_warmth(contenders)
    for name, st in split.items():
        print(
            f"{name}: median {st['warm']['median']:.2f} ms right after another cgroup-creating run "
            f"(n={st['warm']['n']}), {st['cold']['median']:.2f} ms after others (n={st['cold']['n']})"
        )
    if split:
        print(
            "  (cold starts pay more: probably an RCU grace period in cgroup attach, skipped when another "
            "attach happened a few ms before; crun --cgroup-manager=disabled shows no such gap)"
        )
    engines = {c.name: c.info.get("engine") for c in contenders if isinstance(c, Library) and c.info.get("engine")}
    if engines:
        print("library engines used: " + ", ".join(f"{k} -> {v}" for k, v in engines.items()))
    if any(c.uses_cgroups for c in contenders):
        print(
            f"runc, crun and isolate (but isolate-lib-nolimit) set memory {LIMIT_MEMORY_MIB} MiB, pids {LIMIT_PIDS} "
            f"and cpu {LIMIT_CPUS} cgroup limits; isolate-lib-nolimit has only isolate's accounting cgroups."
        )
    if any(isinstance(c, Oci) for c in contenders):
        print(
            "runc and crun run `runc spec`'s default config (its mounts, masked and read-only paths), the same "
            "work as isolate's default sandbox, which also mounts an overlay root and loads a seccomp filter."
        )
    if "isolate-cli" in by:
        print("isolate-cli includes the Python interpreter start of the isolate command.")
    return by, ratios, split


def print_sections(extra: dict[str, Any]) -> None:
    for name, fmt in (("throughput", fmt_throughput), ("detached", fmt_detached), ("images", fmt_images)):
        if name in extra:
            print()
            print(fmt(extra[name]))


def result_document(
    command: str,
    machine: dict[str, Any],
    config: dict[str, Any],
    contenders: list[Contender],
    ratios: dict[str, Any],
    split: dict[str, Any],
    extra: dict[str, Any],
    targets: list[dict[str, Any]],
    leak: dict[str, Any],
) -> dict[str, Any]:
    """bench.json: everything measured, every sample included."""
    crun = crun_median(contenders)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": machine,
        "config": config,
        "results": {
            c.name: {
                "group": c.group,
                "what": c.desc,
                **stats(c.samples),
                "ratio_to_crun": (statistics.median(c.samples) / crun) if crun and c.samples else None,
                "error": c.error,
                "info": c.info,
                "samples_ms": c.samples,
                "ran_after": c.after,
            }
            for c in contenders
        },
        "ratios": ratios,
        "cgroup_warm_vs_cold": split,
        **extra,
        "targets": targets,
        "leak_check": leak,
    }
