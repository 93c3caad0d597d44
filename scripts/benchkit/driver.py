"""The command line and the run: select, set up, measure, clean up, check for leaks, report."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import benchkit
from benchkit.contenders import CONTENDERS, Contender, Library, make_contenders
from benchkit.context import Context
from benchkit.detached import run_detached
from benchkit.host import (
    cgroup_mounts,
    cpu_model,
    deb_versions,
    dir_entries,
    first_line,
    git_describe,
    leak_cgroups,
    mem_total_gib,
    mounts,
    os_release,
    read_int,
    remove_cgroup_tree,
    tree_pids,
)
from benchkit.images import run_images
from benchkit.latency import measure
from benchkit.limits import LIMIT_CPUS, LIMIT_MEMORY_MIB, LIMIT_PIDS
from benchkit.plot import plot
from benchkit.procs import reap_descendants, set_child_subreaper
from benchkit.report import fmt_targets, print_sections, print_start_latency, result_document
from benchkit.targets import evaluate
from benchkit.throughput import run_throughput
from benchkit.timing import on_alarm
from benchkit.tools import ensure_tools, find_isolate_bin, find_lib_python

SECTIONS = ("throughput", "detached", "images")


def select_names(only: str | None, skip: set[str]) -> tuple[list[str], list[str]]:
    """(start-latency contenders, sections) to run: all of them, or those --only names (patterns allowed)."""
    if not only:
        return list(CONTENDERS), [x for x in SECTIONS if x not in skip]
    picked = set()
    for pat in only.split(","):
        pat = pat.strip()
        hits = [n for n in (*CONTENDERS, *SECTIONS) if fnmatch.fnmatch(n, pat)]
        if not hits:
            sys.exit(f"bench: --only {pat!r} matches nothing; names: {', '.join((*CONTENDERS, *SECTIONS))}")
        picked.update(hits)
    return [n for n in CONTENDERS if n in picked], [x for x in SECTIONS if x in picked and x not in skip]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description=(benchkit.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="contenders: " + ", ".join(CONTENDERS) + "; sections: " + ", ".join(SECTIONS),
    )
    ap.add_argument("--runs", type=int, default=200, help="timed runs of each contender (default 200)")
    ap.add_argument("--runc-runs", type=int, help="timed runs of runc, ~20 ms each (default: min(--runs, 100))")
    ap.add_argument("--warmup", type=int, help="warm-up rounds discarded (default 5; 2 with --quick)")
    ap.add_argument("--rootfs", help="busybox root to use (default: build one in a temp dir, removed at the end)")
    ap.add_argument("--isolate-bin", help="the isolate command (default: isolate beside this interpreter, or PATH)")
    ap.add_argument("--out", default="bench-results", help="directory for bench.json and bench.png")
    ap.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="contenders or sections to run (shell patterns allowed); no section named: none runs",
    )
    ap.add_argument("--quick", action="store_true", help="20 runs each: a smoke test")
    ap.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    ap.add_argument("--install-matplotlib", action="store_true", help="pip install matplotlib if it is missing")
    sec = ap.add_argument_group("sections")
    sec.add_argument("--skip-throughput", action="store_true", help="no throughput section")
    sec.add_argument("--skip-detached", action="store_true", help="no detached section")
    sec.add_argument("--skip-images", action="store_true", help="no images section (scripts/bench-images)")
    sec.add_argument("--seconds", type=float, help="length of each throughput loop (default 5; 1 with --quick)")
    sec.add_argument("--callers", default="1,2,4,8", help="concurrent callers to measure (default 1,2,4,8)")
    sec.add_argument(
        "--rounds",
        type=int,
        help="interleaved windows of each sequential loop; the median is reported (default 3; 1 with --quick)",
    )
    sec.add_argument(
        "--detached",
        type=int,
        metavar="N",
        help="detached sandboxes of the library and of crun (default 1000; 50 with --quick)",
    )
    sec.add_argument(
        "--detached-cli",
        type=int,
        metavar="N",
        help="detached sandboxes of `isolate run -d` (default 100; 10 with --quick)",
    )
    sec.add_argument(
        "--detached-runc", type=int, metavar="N", help="detached sandboxes of runc (default 100; 10 with --quick)"
    )
    sec.add_argument("--settle", type=float, default=1.0, help="seconds before each memory reading (default 1)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 20
        args.runc_runs = args.runc_runs or 20
    args.runc_runs = min(args.runc_runs or min(args.runs, 100), args.runs)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    if args.runs < 1 or args.runc_runs < 1 or args.warmup < 0:
        ap.error("--runs and --runc-runs must be positive, --warmup not negative")
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 5.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    for name, full, quick in (("detached", 1000, 50), ("detached_cli", 100, 10), ("detached_runc", 100, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must not be negative")
    try:
        args.callers = sorted({int(x) for x in args.callers.split(",")})
    except ValueError:
        ap.error("--callers: a comma list of numbers, like 1,2,4,8")
    if args.seconds <= 0 or not args.callers or args.callers[0] < 1 or args.rounds < 1:
        ap.error("--seconds, --rounds and --callers must be positive")
    return args


def prepare(ctx: Context, selected: list[str], sections: list[str]) -> None:
    """The tools, the isolate command and interpreter, compiled bytecode and the busybox root."""
    args = ctx.args
    ctx.which = ensure_tools(selected + sections, need_busybox=not args.rootfs)
    ctx.isolate_bin = find_isolate_bin(args.isolate_bin)
    ctx.lib_python = find_lib_python(ctx.isolate_bin)
    compile_code = "import compileall as c, os, isolate as i; c.compile_dir(os.path.dirname(i.__file__), quiet=1)"
    subprocess.run([ctx.lib_python, "-c", compile_code], check=False)
    if args.rootfs:
        ctx.rootfs = os.path.abspath(args.rootfs)
        if not os.path.lexists(os.path.join(ctx.rootfs, "bin/true")):
            sys.exit(f"bench: {ctx.rootfs}/bin/true missing: not a busybox root?")
    else:
        ctx.rootfs = os.path.join(ctx.tmp, "rootfs")
        code = "import sys; from isolate.images.busybox import build_busybox_rootfs; build_busybox_rootfs(sys.argv[1])"
        build = subprocess.run([ctx.lib_python, "-c", code, ctx.rootfs])
        if build.returncode != 0:
            sys.exit(f"bench: building the busybox root with {ctx.lib_python} failed")


def machine_facts(ctx: Context) -> dict[str, Any]:
    return {
        "kernel": os.uname().release,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "mem_gib": mem_total_gib(),
        "cgroups": ctx.cgroups,
        "python_driver": platform.python_version(),
        "python_library": first_line([ctx.lib_python, "-V"]).replace("Python ", ""),
        "os": os_release(),
        "pid_max": read_int("/proc/sys/kernel/pid_max"),
        "runc": first_line([ctx.which["runc"], "--version"]) if ctx.which.get("runc") else None,
        "crun": first_line([ctx.which["crun"], "--version"]) if ctx.which.get("crun") else None,
        "bwrap": first_line([ctx.which["bwrap"], "--version"]) if ctx.which.get("bwrap") else None,
        "packages": deb_versions(["runc", "crun", "bubblewrap", "busybox-static"]),
        "isolate_bin": ctx.isolate_bin,
        "lib_python": ctx.lib_python,
        "isolate_git": git_describe(os.path.dirname(ctx.script)),
    }


def print_header(ctx: Context, machine: dict[str, Any]) -> None:
    print(f"isolate benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(
        f"{machine['os']}, kernel {machine['kernel']}, nproc {machine['nproc']}, CPU {machine['cpu']}, "
        f"{machine['mem_gib']} GiB, cgroups {machine['cgroups']}"
    )
    print(f"python {machine['python_library']} ({ctx.lib_python}), driver python {machine['python_driver']}")
    versions = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    if versions:
        print(f"Debian packages: {versions}")
    built = " (busybox, isolate.images.busybox.build_busybox_rootfs)"
    print(f"rootfs {ctx.rootfs}" + ("" if ctx.args.rootfs else built))
    print(
        f"isolate sandboxes: cgroup parent {ctx.cgroup_parent}, state dir {ctx.state_dir}; "
        f"limits memory {LIMIT_MEMORY_MIB} MiB, pids {LIMIT_PIDS}, cpus {LIMIT_CPUS} unless said otherwise"
    )


def run_section(ctx: Context, section: str) -> dict[str, Any]:
    args = ctx.args
    if section == "throughput":
        return run_throughput(ctx, args.seconds, args.callers, args.rounds, args.seed)
    if section == "detached":
        return run_detached(ctx, args.detached, args.detached_cli, args.detached_runc, args.settle)
    return run_images(ctx, args.quick)


def close_all(started: list[Contender], problems: list[str]) -> None:
    for c in started:
        try:
            c.close()
        except (RuntimeError, OSError, ValueError, AttributeError) as e:  # AttributeError: set-up failed early
            problems.append(f"{c.name}: closing: {e}")


def clean_up(ctx: Context, contenders: list[Contender], extra: dict[str, Any]) -> list[str]:
    """Delete, kill and remove what this run left (its containers, processes, cgroups and temp dir);
    what there was to clean up, as problems."""
    problems: list[str] = []
    for c in contenders:
        if c.info.get("leftover_containers"):
            left = c.info["leftover_containers"]
            problems.append(f"{c.name}: containers left in its state dir (deleted): {left}")
    for name, section in extra.items():
        if isinstance(section, dict) and section.get("leftover_containers"):
            problems.append(f"{name}: containers left in its state dir (deleted): {section['leftover_containers']}")
    for name, row in extra.get("detached", {}).items():
        for key in ("leftover", "helpers_still_running", "teardown_errors"):
            if row.get(key):
                problems.append(f"detached {name}: {key.replace('_', ' ')}: {row[key]}")
    strays = sorted(tree_pids(ctx.cgroup_parent))
    for pid in strays:  # in this run's own cgroups, so ours
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if strays:
        problems.append(f"processes left in this run's cgroups (killed): {strays}")
    problems += [f"process left (killed): {p}" for p in reap_descendants()]
    for mp in cgroup_mounts():
        problems += remove_cgroup_tree(os.path.join(mp, ctx.cgroup_parent))
    records = dir_entries(os.path.join(ctx.state_dir, "sandboxes"))
    if records:
        problems.append(f"isolate left sandbox records in its state dir: {sorted(records)[:5]}")
    tmp = ctx.tmp
    ours = [mp for mp, _ in mounts() if mp == tmp or mp.startswith(tmp + "/")]
    if ours:
        problems.append(f"mounts left under {tmp}, not removing it: {ours}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(tmp):
            problems.append(f"could not remove {tmp}")
    return problems


def host_snapshot() -> dict[str, Any]:
    return {"mountinfo_lines": len(mounts()), "cgroups": leak_cgroups(), "run_isolate": dir_entries("/run/isolate")}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (namespaces, mounts and cgroups)")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    skip = {x for x in SECTIONS if getattr(args, f"skip_{x}")}
    selected, sections = select_names(args.only, skip)
    # Measure isolate as installed, with bytecode cached: an environment that forbids writing
    # .pyc files would make every CLI start recompile the package.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    before = host_snapshot()
    subreaper = set_child_subreaper()
    if args.install_matplotlib and importlib.util.find_spec("matplotlib") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "matplotlib"], check=False)
    tmp = tempfile.mkdtemp(prefix="isolate-bench-")
    ctx = Context(args, tmp)
    # Every isolate process of this run (workers, CLI, monitor, bench-images) keeps its state here.
    os.environ["ISOLATE_STATE_DIR"] = ctx.state_dir
    contenders: list[Contender] = []
    problems: list[str] = []
    started: list[Contender] = []
    machine: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    failed: list[str] = []
    try:
        prepare(ctx, selected, sections)
        machine = machine_facts(ctx)
        print_header(ctx, machine)

        contenders = make_contenders(ctx, selected, args.runs, args.runc_runs)
        for c in contenders:
            try:
                c.setup(ctx)
                started.append(c)
            except (RuntimeError, OSError) as e:
                started.append(c)
                c.error = f"set-up failed: {e}"
                print(f"{c.name}: {c.error}", file=sys.stderr)
        lib = next((c for c in contenders if isinstance(c, Library) and c.info.get("isolate")), None)
        if lib:
            machine["isolate"] = lib.info["isolate"]
            machine["isolate_git"] = git_describe(lib.info["isolate_path"])
            print(
                f"isolate {machine['isolate']} from {lib.info['isolate_path']} (git {machine['isolate_git']}), "
                f"CLI {ctx.isolate_bin}"
            )
        if contenders:
            print(
                f"start latency: {args.runs} runs each (runc {args.runc_runs}), {args.warmup} warm-up rounds "
                f"discarded, round-robin in a shuffled order (seed {args.seed})\n",
                flush=True,
            )
            measure(contenders, args.runs, args.warmup, args.seed)
        close_all(started, problems)
        started = []
        reap_descendants(grace=3.0)
        for section in sections:
            print(f"\n== {section}", file=sys.stderr, flush=True)
            try:
                extra[section] = run_section(ctx, section)
            except (RuntimeError, OSError, KeyError) as e:
                extra[section] = {"error": str(e)}
                print(f"  {section} failed: {e}", file=sys.stderr, flush=True)
            if "error" in extra[section] or (
                section == "detached"
                and any("error" in row for row in extra[section].values() if isinstance(row, dict))
            ):
                failed.append(section)
    finally:
        close_all(started, problems)
        problems += clean_up(ctx, contenders, extra)

    after = host_snapshot()
    if after["mountinfo_lines"] != before["mountinfo_lines"]:
        problems.append(f"mountinfo lines {before['mountinfo_lines']} -> {after['mountinfo_lines']}")
    new_cgroups = sorted(after["cgroups"] - before["cgroups"])
    ours = [cg for cg in new_cgroups if ctx.cgroup_parent in cg]
    others = [cg for cg in new_cgroups if ctx.cgroup_parent not in cg]
    if ours:
        problems.append(f"cgroups of this run left behind: {ours}")
    new_state = sorted(after["run_isolate"] - before["run_isolate"])
    if new_state:
        problems.append(f"new entries in /run/isolate: {new_state}")

    by, ratios, split = print_start_latency(contenders)
    print_sections(extra)
    targets = evaluate({"start": by, **extra}, machine.get("nproc") or 1)
    if targets:
        print()
        print(fmt_targets(targets))

    leak = {
        "mountinfo_lines_before": before["mountinfo_lines"],
        "mountinfo_lines_after": after["mountinfo_lines"],
        "new_cgroups": new_cgroups,
        "new_cgroups_not_ours": others,
        "subreaper": subreaper,
        "problems": problems,
    }
    print(
        f"\nleak check: mountinfo {before['mountinfo_lines']} -> {after['mountinfo_lines']} lines, "
        f"cgroups of this run left: {len(ours)}, temp dir {'removed' if not os.path.exists(tmp) else 'LEFT'}, "
        f"{'clean' if not problems else 'PROBLEMS:'}"
    )
    for p in problems:
        print(f"  {p}")
    if others:
        print(f"  (cgroups that appeared meanwhile, not made by this script, left alone: {others})")

    os.makedirs(args.out, exist_ok=True)
    config = {
        "runs": args.runs,
        "runc_runs": args.runc_runs,
        "warmup": args.warmup,
        "seed": args.seed,
        "rootfs": ctx.rootfs if args.rootfs else "busybox (temporary)",
        "order": "round-robin, shuffled",
        "limits": {"memory_mib": LIMIT_MEMORY_MIB, "pids": LIMIT_PIDS, "cpus": LIMIT_CPUS},
        "sections": sections,
        "seconds": args.seconds,
        "callers": args.callers,
        "detached": args.detached,
        "detached_cli": args.detached_cli,
        "detached_runc": args.detached_runc,
        "settle_s": args.settle,
        "cgroup_parent": ctx.cgroup_parent,
    }
    result = result_document(
        "scripts/bench " + " ".join(argv), machine, config, contenders, ratios, split, extra, targets, leak
    )
    json_path = os.path.join(args.out, "bench.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nresults: {json_path}")
    title = (
        f"isolate vs crun/runc; {machine.get('cpu', '?')}, {machine.get('nproc', '?')} CPUs, "
        f"kernel {machine.get('kernel', '?')}, {time.strftime('%Y-%m-%d')}"
    )
    print(plot(os.path.join(args.out, "bench.png"), contenders, title, extra))
    failed += [c.name for c in contenders if c.error]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or problems else 0
