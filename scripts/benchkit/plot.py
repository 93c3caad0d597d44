"""bench.png: start latencies, throughput and detached sandboxes in one figure (when matplotlib is there)."""

from __future__ import annotations

from typing import Any

from benchkit.contenders import Contender
from benchkit.targets import BY_ID
from benchkit.timing import stats


def plot(path: str, contenders: list[Contender], title: str, extra: dict[str, Any]) -> str:
    try:
        import matplotlib  # type: ignore[import-not-found]
    except ImportError:
        return "matplotlib is not importable: plot skipped (pip install matplotlib, or pass --install-matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    from matplotlib.patches import Patch  # type: ignore[import-not-found]

    rows = sorted(((c.name, stats(c.samples), c.group) for c in contenders if c.samples), key=lambda r: r[1]["median"])
    tp = extra.get("throughput") if "error" not in extra.get("throughput", {"error": 1}) else None
    dt = {k: v for k, v in extra.get("detached", {}).items() if v.get("start")}
    im = extra.get("images") if "error" not in extra.get("images", {"error": 1}) else None
    if not rows and not tp and not dt:
        return "no data to plot"
    colors = {"baseline": "#9e9e9e", "peer": "#4c72b0", "isolate": "#dd8452"}
    lower = bool(tp or dt)
    top_h = 0.34 * len(rows) + 1.2 if rows else 0
    fig = plt.figure(figsize=(13, top_h + (3.8 if lower else 0) + 0.5), layout="constrained")
    grid = fig.add_gridspec(2 if rows and lower else 1, 3, height_ratios=[top_h, 3.8] if rows and lower else None)
    if rows:
        ax = fig.add_subplot(grid[0, :])
        y = list(range(len(rows)))
        med = [r[1]["median"] for r in rows]
        err = [[r[1]["median"] - r[1]["min"] for r in rows], [r[1]["p90"] - r[1]["median"] for r in rows]]
        ax.barh(y, med, xerr=err, color=[colors[r[2]] for r in rows], capsize=3, ecolor="#333333")
        ax.set_yticks(y)
        ax.set_yticklabels([r[0] for r in rows])
        for yi, r in zip(y, rows):
            ax.text(r[1]["p90"], yi, f"  {r[1]['median']:.2f}", va="center", fontsize=8)
        label = "start latency of /bin/true, ms (bar: median, whisker: min to p90)"
        if im and "start" in im:
            label += f";  overlay with 20 lower layers: {im['twenty_minus_one_ms']:+.2f} ms over 1 layer"
        ax.set_xlabel(label)
        ax.set_xlim(0, max(r[1]["p90"] for r in rows) * 1.15)
        ax.grid(axis="x", alpha=0.3)
        groups = sorted({r[2] for r in rows})
        ax.legend(handles=[Patch(color=colors[g], label=g) for g in groups], loc="lower right", fontsize=8)
    row = 1 if rows else 0
    if tp:
        ax = fig.add_subplot(grid[row, 0])
        ns = [int(n) for n in tp["callers"]]
        rates = [tp["callers"][str(n)]["runs_per_s"] for n in ns]
        ax.plot(ns, rates, "o-", color=colors["isolate"], label="Sandbox.run, N callers, prestart=False")
        seq = tp["sequential"].get("isolate-lib", {}).get("runs_per_s")
        warm = [(int(n), r["runs_per_s"]) for n, r in tp.get("callers_prestart", {}).items()]
        if seq:
            warm = [(1, seq)] + warm
            ax.plot(
                [n for n, _ in warm],
                [r for _, r in warm],
                "s--",
                color=colors["isolate"],
                alpha=0.6,
                label="Sandbox.run, N callers (prestart)",
            )
        nproc = tp["nproc"]
        ideal = [rates[0] * min(n, nproc) for n in ns]
        ax.plot(ns, ideal, ":", color="#333333", label=f"linear up to {nproc} CPUs")
        crun_rate = tp["sequential"].get("crun", {}).get("runs_per_s")
        if crun_rate:
            ax.axhline(crun_rate, ls="--", color=colors["peer"], label="crun run, sequential")
        goal = BY_ID["sequential_runs_per_s"].goal
        ax.axhline(goal, ls="-.", color="#55a868", lw=1, label=f"target: {goal:g}/s sequential")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("runs/s (aggregate)")
        ax.set_ylim(0, max(ideal + rates + [r for _, r in warm] + [crun_rate or 0, goal]) * 1.15)
        ax.set_title("throughput of /bin/true sandboxes", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if dt:
        names = list(dt)
        ax = fig.add_subplot(grid[row, 1])
        x = list(range(len(names)))
        st = [dt[n]["start"]["median"] for n in names]
        td = [dt[n]["teardown"]["median"] if dt[n].get("teardown") else 0 for n in names]
        ax.bar([i - 0.2 for i in x], st, 0.4, label="start", color=colors["isolate"])
        ax.bar([i + 0.2 for i in x], td, 0.4, label="teardown", color=colors["peer"])
        ax.set_xticks(x)
        ax.set_xticklabels([f"{n}\n(n={dt[n]['n']})" for n in names], fontsize=7)
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found]

        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.set_ylabel("ms per sandbox (median, log scale)")
        ax.set_title("detached sleep sandboxes: start and teardown", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
        ax = fig.add_subplot(grid[row, 2])
        host = [(dt[n].get("memory") or {}).get("host_per_sandbox_mib") or 0 for n in names]
        pss = [(dt[n].get("memory") or {}).get("pss_per_sandbox_mib") or 0 for n in names]
        ax.bar([i - 0.2 for i in x], host, 0.4, label="host (MemAvailable)", color="#8172b2")
        ax.bar([i + 0.2 for i in x], pss, 0.4, label="PSS of its processes", color="#ccb974")
        goal = BY_ID["detached_host_memory"].goal
        ax.axhline(goal, ls="-.", color="#55a868", lw=1, label=f"target: {goal:g} MiB")
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7)
        ax.set_ylabel("MiB per idle sandbox")
        ax.set_title("memory per idle detached sandbox", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"plot: {path}"
