"""THE registry of parsers of outside input, and how each is fed one fuzz case.

Each row of ``TARGETS`` is (name, strategy, feed): the strategy draws a case, ``feed(case,
ws)`` hands it to the parser the way isolate itself does, with every path it may write inside
``ws.target``.  test_parsers.py runs every row under the same property: only IsolateError
comes out, as one line, and nothing outside ``ws.target`` changes.  A parser added later
(registry manifests, network specs, Pod YAML) joins with one row, e.g.::

    Target("pod-yaml", json_case(POD_DOC), lambda case, ws: parse_pod(case_bytes(case, ws))),
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import fuzz_documents as D
import fuzz_strategies as F
from hypothesis import strategies as st

from isolate.errors import IsolateError


class Workspace(NamedTuple):
    """One case's directory: ``target`` is the parser's to write in, ``outside`` a sentinel beside it."""

    root: Path
    target: Path
    outside: Path


class Target(NamedTuple):
    name: str
    strategy: st.SearchStrategy[Any]
    feed: Callable[[Any, Workspace], object]
    scale: float = 1.0  # share of the profile's examples (slow parsers get fewer in CI)


# ------------------------------------------------------------------------------ shared pieces
def json_case(doc: Any) -> st.SearchStrategy[dict[str, Any]]:
    """A valid document's mutation: ops on its values, then a tweak of its text."""
    return st.fixed_dictionaries({"doc": st.just(doc), "ops": F.json_ops, "tweak": F.json_text_tweaks})


def case_bytes(case: dict[str, Any], ws: Workspace) -> bytes:
    return F.dump_json(F.apply_json_ops(case["doc"], case["ops"]), case["tweak"], str(ws.outside))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ layer tarballs
layer_cases = st.fixed_dictionaries(
    {
        "tar": F.tar_specs(),
        "expect": st.sampled_from(["none", "none", "none", "right", "right", "wrong", "sha512", "bogus"]),
        "mutate": st.one_of(st.none(), F.mutations),
        "mutate_compressed": st.booleans(),
    }
)


def feed_layer(case: dict[str, Any], ws: Workspace) -> object:
    from isolate.images.unpack import unpack_layer

    raw = F.build_tar(case["tar"], str(ws.outside))
    if case["mutate"] and not case["mutate_compressed"]:
        raw = F.mutate(raw, case["mutate"])
    blob = F.compress(raw, case["tar"]["compression"])
    if case["mutate"] and case["mutate_compressed"]:
        blob = F.mutate(blob, case["mutate"])
    expect = case["expect"]
    digest = {"none": None, "right": _sha(blob), "wrong": "sha256:" + "0" * 64, "sha512": "sha512:" + "0" * 128,
              "bogus": "md5:\n../x"}[expect]  # fmt: skip
    diff_id = {"right": _sha(raw), "wrong": "sha256:" + "1" * 64}.get(expect)
    return unpack_layer(io.BytesIO(blob), str(ws.target), expected_digest=digest, expected_diff_id=diff_id,
                        progress=lambda n: None)  # fmt: skip


# ------------------------------------------------------------------------------ image archives
small_layers = st.lists(F.tar_specs(max_members=4), min_size=0, max_size=3)
archive_cases = st.fixed_dictionaries(
    {
        "layers": small_layers,
        "config": F.json_ops,
        "manifest": F.json_ops,
        "index": F.json_ops,
        "tweak": F.json_text_tweaks,
        "tweak_which": st.sampled_from(["config", "manifest", "index"]),
        "archive_mutations": st.one_of(st.none(), st.none(), F.mutations),
        "name": st.sampled_from([None, None, "fuzz", "a b", "", "x:y:z", "../../etc", "fuzz:1"]),
        "extra": st.sampled_from(["none", "none", "symlink-blob", "dup-manifest", "dir-manifest"]),
    }
)


def _progress(what: str, size: int) -> Callable[[int], None]:
    return lambda done: None


def _archive_parts(case: dict[str, Any], ws: Workspace) -> tuple[list[bytes], list[str], Callable[..., bytes]]:
    out = str(ws.outside)
    layers = [F.build_tar(spec, out) for spec in case["layers"]]
    blobs = [F.compress(raw, spec["compression"]) for raw, spec in zip(layers, case["layers"])]
    diff_ids = [_sha(raw) for raw in layers]

    def doc(which: str, base: Any) -> bytes:
        tweak = case["tweak"] if case["tweak_which"] == which else "none"
        return F.dump_json(F.apply_json_ops(base, case[which]), tweak, out)

    return blobs, diff_ids, doc


def _tar_of(files: list[tuple[str, bytes | str | None]]) -> bytes:
    """An archive of files; a str value makes a symlink, None a directory."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _import(ws: Workspace, path: Path, name: str | None) -> Any:
    from isolate.images import ImageStore
    from isolate.images.formats import import_path

    return import_path(ImageStore(str(ws.target / "store")), str(path), name, _progress)


def docker_archive(case: dict[str, Any], ws: Workspace) -> Path:
    blobs, diff_ids, doc = _archive_parts(case, ws)
    config = doc("config", D.image_config(diff_ids))
    config_name = _sha(config)[7:] + ".json"
    names = [f"{i}/layer.tar" for i in range(len(blobs))]
    files: list[tuple[str, bytes | str | None]] = [
        ("manifest.json", doc("manifest", D.docker_manifest(config_name, names)))
    ]
    files += [(config_name, config), *zip(names, blobs)]
    if case["extra"] == "symlink-blob" and names:
        files[-1] = (names[-1], str(ws.outside / "victim"))
    elif case["extra"] == "dup-manifest":
        files.append(("manifest.json", b"[]"))
    elif case["extra"] == "dir-manifest":
        files.insert(0, ("manifest.json", None))
    data = _tar_of(files)
    if case["archive_mutations"]:
        data = F.mutate(data, case["archive_mutations"])
    path = ws.target / "docker.tar"
    path.write_bytes(data)
    return path


def oci_files(case: dict[str, Any], ws: Workspace) -> list[tuple[str, bytes | str | None]]:
    from isolate.images.formats import host_arch

    blobs, diff_ids, doc = _archive_parts(case, ws)
    config = doc("config", D.image_config(diff_ids))
    manifest = doc("manifest", D.oci_manifest((_sha(config), len(config)), [(_sha(b), len(b)) for b in blobs]))
    index = doc("index", D.oci_index((_sha(manifest), len(manifest)), host_arch()))
    files: list[tuple[str, bytes | str | None]] = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                                                   ("index.json", index)]  # fmt: skip
    files += [(f"blobs/sha256/{_sha(b)[7:]}", b) for b in (config, manifest, *blobs)]
    if case["extra"] == "symlink-blob" and blobs:
        files[-1] = (files[-1][0], str(ws.outside / "victim"))
    elif case["extra"] == "dup-manifest":
        files.append(("index.json", b"{}"))
    elif case["extra"] == "dir-manifest":
        files.insert(0, ("index.json", None))
    return files


def feed_docker_archive(case: dict[str, Any], ws: Workspace) -> object:
    return _import(ws, docker_archive(case, ws), case["name"])


def feed_oci_archive(case: dict[str, Any], ws: Workspace) -> object:
    data = _tar_of(oci_files(case, ws))
    if case["archive_mutations"]:
        data = F.mutate(data, case["archive_mutations"])
    path = ws.target / "oci.tar"
    path.write_bytes(data)
    return _import(ws, path, case["name"])


def feed_oci_dir(case: dict[str, Any], ws: Workspace) -> object:
    layout = ws.target / "layout"
    layout.mkdir()
    for name, data in oci_files(case, ws):
        path = layout / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            continue
        if data is None:
            path.mkdir()
        elif isinstance(data, str):
            path.symlink_to(data)
        else:
            path.write_bytes(data)
    return _import(ws, layout, case["name"])


# ------------------------------------------------------------------------------ an image's run config
PASSWD_LINES = ["root:x:0:0:root:/root:/bin/sh", "fuzz:x:1000:1000::/home/fuzz:/bin/sh", "fuzz:x:abc:def",
                "fuzz:x:-1:-1::/:", "fuzz:x:99999999999999999999:0::/:", "fuzz:x:", "fuzz:x:1000", "fuzz",
                "fuzz:x:1e3:0::/:", "fuzz:x: 1:2::/:", "fuzz:x:١:٢::/:"]  # fmt: skip
image_run_cases = st.fixed_dictionaries(
    {
        "config": F.json_ops,
        "passwd": st.lists(
            st.one_of(st.just(PASSWD_LINES[1]), st.sampled_from(PASSWD_LINES), st.text(max_size=40)),
            min_size=1,
            max_size=4,
        ),
        "group": st.lists(
            st.one_of(st.just("fuzz:x:1000:"), st.sampled_from(PASSWD_LINES), st.text(max_size=40)),
            min_size=1,
            max_size=4,
        ),
        "argv": st.lists(st.text(max_size=10), max_size=2),
    }
)


def feed_image_run(case: dict[str, Any], ws: Workspace) -> object:
    from isolate import Sandbox
    from isolate.plan.explain import explain

    files = {"etc/passwd": "\n".join(case["passwd"]).encode("utf-8", "surrogateescape"),
             "etc/group": "\n".join(case["group"]).encode("utf-8", "surrogateescape")}  # fmt: skip
    layer = F.tiny_tar(files)
    config = F.dump_json(F.apply_json_ops(D.image_config([_sha(layer)]), case["config"]), "none", str(ws.outside))
    config_name = _sha(config)[7:] + ".json"
    manifest = json.dumps(D.docker_manifest(config_name, ["layer.tar"])).encode()
    path = ws.target / "image.tar"
    path.write_bytes(_tar_of([("manifest.json", manifest), (config_name, config), ("layer.tar", layer)]))
    store = str(ws.target / "store")
    _import(ws, path, "fuzz")
    sandbox = Sandbox(image="fuzz", image_root=store, state_dir=str(ws.target / "state"), cgroups=False)
    return explain(sandbox.plan(case["argv"]))


# ------------------------------------------------------------------------------ OCI config.json
def feed_oci_config(case: dict[str, Any], ws: Workspace) -> object:
    """runtime.create's reading of a bundle, without the cgroup, the clone or the state record."""
    from isolate.oci import bundle as B
    from isolate.oci import cgroup as C
    from isolate.oci import runtime as R
    from isolate.oci import warnings

    bundle = ws.target / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_bytes(case_bytes(case, ws))
    config = B.load(str(bundle))
    rootfs = B.rootfs_path(str(bundle), config)
    linux = config.get("linux") or {}
    version, dirs = C.resolve(linux.get("cgroupsPath") or "", "fuzz", False)
    for v in ("v1", "v2"):
        C.writes(v, linux.get("resources") or {}, linux.get("devices") or [])
    C.v2_device_rules(linux.get("resources") or {}, linux.get("devices") or [])
    B.namespaces(config)
    program = R._seccomp(str(ws.target / "state"), linux.get("seccomp"))
    plan = B.build(config, rootfs, version, dirs, -1, -1, -1, -1, -1, False, program, b"{}")
    try:
        return [step.shell(rootfs) for step in plan.steps + plan.post_start]
    finally:
        for fd in plan.fds:
            os.close(fd)
        warnings._collected.clear()


# ------------------------------------------------------------------------------ seccomp profiles
def feed_seccomp(case: dict[str, Any], ws: Workspace) -> object:
    from isolate.plan import seccomp

    path = ws.target / "profile.json"
    path.write_bytes(case_bytes(case, ws))
    profile = seccomp.load_docker_profile(str(path))
    return seccomp.cached_program(str(ws.target / "state"), profile)


# ------------------------------------------------------------------------------ option values
size_texts = st.one_of(
    st.text(max_size=20),
    st.builds(lambda n, s, w: w + n + s, st.from_regex(r"[0-9]{0,400}(\.[0-9]{0,5})?", fullmatch=True),
              st.sampled_from(["", "k", "M", "GiB", "tb", "b", "kk", "e9", "  m", "\x00"]), st.sampled_from(["", " "])),
    st.sampled_from(["9" * 400 + "G", "1e999", "nan", "inf", "-1", "0", "0.0000001", ".", "1..2", "1_000", "²", "٣M"]),
)  # fmt: skip
duration_texts = st.one_of(
    size_texts,
    st.builds(lambda n, s: n + s, st.from_regex(r"-?[0-9]{0,400}(\.[0-9]{0,5})?(e-?[0-9]{1,4})?", fullmatch=True),
              st.sampled_from(["", "s", "ms", "m", "h", "d", "S"])),
)  # fmt: skip
cpuset_texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["0", "0-1", "0,1", "1-0", "-1", "0-", "0-99999999999", "0-4294967296", "99999", "0,,1", " 0 "]),
)
limit_cases = st.fixed_dictionaries(
    {},
    optional={
        "memory": size_texts,
        "memory_swap": size_texts,
        "cpus": duration_texts,
        "cpu_weight": duration_texts,
        "cpuset": cpuset_texts,
        "pids": duration_texts,
        "io_weight": duration_texts,
    },
)


def feed_limits(case: dict[str, str], ws: Workspace) -> object:
    from isolate.limits import Limits

    return Limits(**case).to_dict()


def feed_size(text: str, ws: Workspace) -> object:
    from isolate.limits import parse_size

    return parse_size(text, "--memory")


def feed_duration(text: str, ws: Workspace) -> object:
    from isolate.cli.run import parse_duration

    return parse_duration(text)


RUN_VALUES: dict[str, st.SearchStrategy[str]] = {
    "--memory": size_texts, "--memory-swap": size_texts, "--cpus": duration_texts, "--cpu-weight": duration_texts,
    "--cpuset": cpuset_texts, "--pids": duration_texts, "--io-weight": duration_texts, "--time": duration_texts,
    "--wall-time": duration_texts, "--oom-score-adj": duration_texts,
    "--user": st.one_of(st.text(max_size=12), st.sampled_from(["0", "1000:1000", "-1", "99999999999999:0", "a:b",
                                                               "4294967295", "4294967296:1", ":", "1:"])),
    "--ulimit": st.one_of(st.text(max_size=16), st.builds(lambda n, v: f"{n}={v}", st.sampled_from(
        ["nofile", "nproc", "core", "cpu", "bogus"]), st.sampled_from(["1", "1:2", "2:1", "-1", "unlimited", "x",
                                                                       "99999999999999999999999", "1:-5", ""]))),
    "--volume": st.one_of(st.text(max_size=16), st.sampled_from(["@OUT@:/mnt", "@OUT@:rel", "@OUT@:/mnt:rx", "::",
                                                                 "/nonexistent:/x"])),
    "--tmpfs": st.one_of(st.text(max_size=16), st.sampled_from(["/tmp", "rel", "/tmp:size=1x", ":", "/t:mode=9"])),
    "--env": st.text(max_size=16), "--hostname": st.text(max_size=70), "--workdir": st.text(max_size=16),
    "--share": st.one_of(st.text(max_size=10), st.sampled_from(["pid", "net,uts", "mount", "user", ","])),
    "--cgroup-parent": st.one_of(st.text(max_size=10), st.sampled_from(["/", "..", "a/../b", "a//b", "ci/jobs"])),
    "--cap-add": st.one_of(st.text(max_size=12), st.sampled_from(["ALL", "NET_ADMIN", "cap_sys_admin", "BOGUS"])),
    "--cap-drop": st.one_of(st.text(max_size=12), st.sampled_from(["ALL", "CHOWN", "BOGUS"])),
    "--seccomp": st.sampled_from(["default", "unconfined", "@OUT@/victim", "/nonexistent.json", ""]),
    "--mode": st.sampled_from(["pivot_root", "chroot", "x"]), "--net": st.sampled_from(["none", "host", "x"]),
    "--layer": st.sampled_from(["@OUT@", "/nonexistent", "", "@OUT@/victim"]),
}  # fmt: skip


@st.composite
def run_cases(draw: Any) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(RUN_VALUES)), max_size=6))
    return {
        "options": [(name, draw(RUN_VALUES[name])) for name in names],
        "flags": draw(
            st.lists(st.sampled_from(["--read-only", "--privileged", "--userns", "--no-cgroup", "--init"]), max_size=2)
        ),  # fmt: skip
        "command": draw(st.lists(st.text(max_size=8), min_size=1, max_size=2)),
    }


def feed_run_options(case: dict[str, Any], ws: Workspace) -> object:
    """``isolate run --dry-run ...``: the fast option parser, then the plan (nothing runs)."""
    from isolate.cli.options import fast_parse
    from isolate.cli.run import execute_run

    rootfs = ws.target / "rootfs"
    rootfs.mkdir()
    argv = ["--rootfs", str(rootfs), *case["flags"]]
    for option, value in case["options"]:
        argv += [option, value.replace("@OUT@", str(ws.outside))]
    argv += ["--", *case["command"]]
    parsed = fast_parse(argv)
    if parsed is None:
        return None  # click's path: a value fast_parse leaves to click (no such value is drawn)
    opts, command = parsed
    opts.update(dry_run=True, detach=False, json=False, result_file=None, meta=None, tty=False)
    old = os.environ.get("ISOLATE_STATE_DIR")
    os.environ["ISOLATE_STATE_DIR"] = str(ws.target / "state")
    err = io.StringIO()
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(err):
            status = execute_run(opts, command)
    finally:
        if old is None:
            del os.environ["ISOLATE_STATE_DIR"]
        else:
            os.environ["ISOLATE_STATE_DIR"] = old
    if status != 0:  # the CLI printed the IsolateError: the harness checks it is one line
        raise IsolateError(err.getvalue().rstrip("\n"))
    return status


# ------------------------------------------------------------------------------ isolate-oci update --resources
def feed_oci_resources(case: dict[str, Any], ws: Workspace) -> object:
    from isolate.oci import bundle as B
    from isolate.oci import cgroup as C

    path = ws.target / "resources.json"
    path.write_bytes(case_bytes(case, ws))
    try:
        resources = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # main.py's update refuses these the same way
        raise IsolateError(f"--resources {path}: cannot read linux.resources JSON: {exc}") from None
    B.check(resources, B.RESOURCES_SCHEMA, f"--resources {path}")
    return C.writes("v1", resources) + C.writes("v2", resources)


# ------------------------------------------------------------------------------ THE TABLE
TARGETS = [
    Target("layer-tar", layer_cases, feed_layer),
    Target("docker-archive", archive_cases, feed_docker_archive, 0.5),
    Target("oci-archive", archive_cases, feed_oci_archive, 0.5),
    Target("oci-layout-dir", archive_cases, feed_oci_dir, 0.5),
    Target("image-run-config", image_run_cases, feed_image_run, 0.5),
    Target("oci-config.json", json_case(D.OCI_CONFIG), feed_oci_config),
    Target("oci-resources", json_case(D.OCI_CONFIG["linux"]["resources"]), feed_oci_resources),
    Target("seccomp-profile", json_case(D.SECCOMP_PROFILE), feed_seccomp),
    Target("size", size_texts, feed_size),
    Target("duration", duration_texts, feed_duration),
    Target("limits", limit_cases, feed_limits),
    Target("run-options", run_cases(), feed_run_options),
]

# name -> cases tried, accepted, refused with IsolateError, and distinct failures (type at place)
STATS: dict[str, dict[str, Any]] = {}
