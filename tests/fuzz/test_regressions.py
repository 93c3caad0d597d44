"""One test per bug the fuzzing (or reading the parsers for it) found: the smallest input that
crashed a parser of outside input, now refused with a typed error of one line.

Each was a traceback (or a hang) before: OverflowError, ReadError, JSONDecodeError,
RecursionError, TypeError, KeyError, IsADirectoryError, PermissionError from libseccomp, a set
of a hundred billion CPUs, or a descriptor left open.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import fuzz_documents as D
import pytest
from fuzz_strategies import tiny_tar
from fuzz_targets import _tar_of

from isolate.errors import ConfigError, IsolateError
from isolate.images import ImageStore
from isolate.images.formats import host_arch, import_path
from isolate.images.unpack import ImageError, unpack_layer


def one_line(exc: pytest.ExceptionInfo[IsolateError]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


# ------------------------------------------------------------------------------ size, time, cpu, user
def test_a_size_of_hundreds_of_digits_is_too_large() -> None:
    from isolate.limits import parse_size

    with pytest.raises(ConfigError) as exc:  # was OverflowError: float inf to int
        parse_size("9" * 400 + "G", "--memory")
    assert "too large" in one_line(exc)


@pytest.mark.parametrize("field", ["pids", "cpu_weight", "io_weight"])
def test_a_count_of_hundreds_of_digits_is_too_large(field: str) -> None:
    from isolate.limits import Limits

    with pytest.raises(ConfigError) as exc:  # was OverflowError: int too large to convert to float
        Limits(**{field: "1" + "0" * 400})
    assert "too large" in one_line(exc)


def test_pids_and_times_have_a_ceiling() -> None:
    from isolate.limits import Limits

    with pytest.raises(ConfigError, match="the most is 4194304"):  # pids.max refuses more (EINVAL at run)
        Limits(pids="5000000")
    with pytest.raises(ConfigError, match="the most is 1000000000"):  # timers overflow past it
        Limits(wall_time=1e300)


def test_a_huge_cpu_range_is_refused_at_once() -> None:
    from isolate.limits import parse_cpuset

    with pytest.raises(ConfigError):  # was a set of 10**11 numbers: minutes, then the OOM killer
        parse_cpuset("0-99999999999")


def test_a_user_id_above_the_range_of_uid_t_is_refused() -> None:
    from isolate.config import parse_user

    with pytest.raises(ConfigError, match="4294967294"):  # (uid_t)-1 means "unchanged" to setuid
        parse_user("4294967295")


# ------------------------------------------------------------------------------ layer tarballs
def _device_tar(major: int, minor: int) -> bytes:
    header = bytearray(512)
    header[0:4] = b"null"
    for start, width, value in ((100, 8, 0o644), (108, 8, 0), (116, 8, 0), (124, 12, 0), (136, 12, 0)):
        header[start : start + width] = b"%0*o\0" % (width - 1, value)
    header[156:157] = b"3"
    header[257:265] = b"ustar\x0000"
    for start, value in ((329, major), (337, minor)):
        header[start : start + 8] = (b"\xff" + (value % 256**7).to_bytes(7, "big")) if value < 0 else \
            (b"\x80" + value.to_bytes(7, "big")) if value >= 8**7 else b"%07o\0" % value  # fmt: skip
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + bytes(1024)


@pytest.mark.parametrize("major, minor", [(-1, 0), (0, 2**31), (4096, 0), (0, 1 << 20)])
def test_a_device_number_out_of_range_is_corrupt(major: int, minor: int, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="bad device number") as exc:  # was OverflowError from os.major/makedev
        unpack_layer(io.BytesIO(_device_tar(major, minor)), str(tmp_path), allow_devices=True)
    one_line(exc)


# ------------------------------------------------------------------------------ image archives
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _docker_archive(tmp_path: Path, config: Any = None, manifest: bytes | None = None, layer: bytes = b"") -> Path:
    layer = layer or tiny_tar({"etc/passwd": b"root:x:0:0::/:/bin/sh\n"})
    raw = config if isinstance(config, bytes) else json.dumps(config or D.image_config([_sha(layer)])).encode()
    name = _sha(raw)[7:] + ".json"
    manifest = manifest if manifest is not None else json.dumps(D.docker_manifest(name, ["layer.tar"])).encode()
    path = tmp_path / "image.tar"
    path.write_bytes(_tar_of([("manifest.json", manifest), (name, raw), ("layer.tar", layer)]))
    return path


def _import(tmp_path: Path, path: Path) -> Any:
    return import_path(ImageStore(str(tmp_path / "store")), str(path), None)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_an_archive_corrupt_after_its_first_header(tmp_path: Path) -> None:
    path = _docker_archive(tmp_path)
    data = bytearray(path.read_bytes())
    data[1536:1546] = b"\xff" * 10  # the third header block (after manifest.json's pax header and header)
    path.write_bytes(bytes(data))
    fds = _fds()
    with pytest.raises(ImageError) as exc:  # was tarfile.ReadError from getmembers, and the archive left open
        _import(tmp_path, path)
    one_line(exc)
    assert _fds() == fds


def test_an_archive_cut_inside_a_layer(tmp_path: Path) -> None:
    path = _docker_archive(tmp_path, layer=tiny_tar({"big": os.urandom(20000)}))
    path.write_bytes(path.read_bytes()[:-12000])
    with pytest.raises(ImageError) as exc:  # was tarfile.ReadError raised in the layer's reader thread
        _import(tmp_path, path)
    one_line(exc)


@pytest.mark.parametrize("manifest", [b"\xff\xfe", b"[" * 100_000, b'[{"Config": "x"', b"1" * 5000],
                         ids=["not-utf8", "deep", "truncated", "4300-digits"])  # fmt: skip
def test_a_manifest_that_is_not_json(manifest: bytes, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="manifest.json") as exc:  # was UnicodeDecodeError, RecursionError, ...
        _import(tmp_path, _docker_archive(tmp_path, manifest=manifest))
    one_line(exc)


@pytest.mark.parametrize(
    "key, value",
    [("Env", "PATH=/bin"), ("Cmd", "sh"), ("Entrypoint", [1]), ("User", 0), ("WorkingDir", ["/"])],
)
def test_an_image_config_field_of_the_wrong_type(key: str, value: Any, tmp_path: Path) -> None:
    config = D.image_config([_sha(tiny_tar({"etc/passwd": b"root:x:0:0::/:/bin/sh\n"}))])
    config["config"][key] = value
    with pytest.raises(ImageError, match=f"config.{key}") as exc:  # was a TypeError or AttributeError at run
        _import(tmp_path, _docker_archive(tmp_path, config))
    one_line(exc)


@pytest.mark.parametrize("size", ["abc", float("nan"), float("inf")])
def test_an_oci_layer_size_that_is_not_a_number(size: Any, tmp_path: Path) -> None:
    layer = tiny_tar({"a": b"x"})
    config = json.dumps(D.image_config([_sha(layer)])).encode()
    manifest_doc = D.oci_manifest((_sha(config), len(config)), [(_sha(layer), len(layer))])
    manifest_doc["layers"][0]["size"] = size
    manifest = json.dumps(manifest_doc).encode()
    index = json.dumps(D.oci_index((_sha(manifest), len(manifest)), host_arch())).encode()
    blobs = [(f"blobs/sha256/{_sha(b)[7:]}", b) for b in (config, manifest, layer)]
    path = tmp_path / "oci.tar"
    path.write_bytes(_tar_of([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index), *blobs]))
    progress = lambda what, total: lambda done: None  # noqa: E731 - as the CLI passes one
    # was ValueError or OverflowError from int(size), the size only feeding the progress bar
    assert import_path(ImageStore(str(tmp_path / "store")), str(path), None, progress)


def test_a_directory_where_an_oci_blob_goes(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256" / ("0" * 64)).mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64}
    (layout / "index.json").write_text(json.dumps({"manifests": [manifest]}))
    with pytest.raises(ImageError) as exc:  # was IsADirectoryError
        _import(tmp_path, layout)
    one_line(exc)


@pytest.mark.parametrize("passwd", [b"fuzz:x:abc:def\n", "fuzz:x:²:0\n".encode(), b"fuzz:x:99999999999:0\n"])
def test_an_image_passwd_entry_that_is_not_numeric(passwd: bytes, tmp_path: Path) -> None:
    from isolate.images.users import resolve_user

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(passwd)
    with pytest.raises(ConfigError, match="/etc/passwd") as exc:  # was ValueError from int()
        resolve_user("fuzz", [str(tmp_path)])
    one_line(exc)
    with pytest.raises(ConfigError):  # "²".isdigit() is true; int("²") fails
        resolve_user("²", [str(tmp_path)])


# ------------------------------------------------------------------------------ OCI config.json
def _bundle(tmp_path: Path, config: Any) -> str:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    (tmp_path / "config.json").write_bytes(raw)
    return str(tmp_path)


def _config(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(D.OCI_CONFIG)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return config


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"process__user__uid": "0"}, "process.user.uid: expected an integer"),
        ({"process__args": "sh"}, "process.args: expected a list"),
        ({"process__rlimits__0__soft": 1.5}, "process.rlimits[0].soft: expected an integer"),
        ({"process__oomScoreAdj": 5000}, "process.oomScoreAdj: 5000 is out of range"),
        ({"linux": []}, "linux: expected a JSON object"),
        ({"mounts__0": "proc"}, "mounts[0]: expected a JSON object"),
        ({"linux__resources__memory__limit": "1G"}, "linux.resources.memory.limit: expected an integer"),
        ({"linux__resources__blockIO__throttleReadBpsDevice": [{"major": 8}]}, "minor is missing"),
        ({"linux__namespaces__0__type": 1}, "linux.namespaces[0].type: expected a string"),
        ({"hooks__prestart__0": {"args": ["x"]}}, "hooks.prestart[0]: path is missing"),
        ({"process__env": ["A=\0"]}, "process.env[0]"),
        ({"annotations": {"a\nb": 1}}, "annotations.'a\\nb'"),
    ],
)
def test_a_config_json_field_of_the_wrong_type(changes: dict[str, Any], named: str, tmp_path: Path) -> None:
    from isolate.oci import bundle as B

    with pytest.raises(ConfigError) as exc:  # each was a TypeError, KeyError or AttributeError, somewhere
        B.load(_bundle(tmp_path, _config(**changes)))
    assert named in one_line(exc)


def test_a_capability_set_the_spec_does_not_have_is_ignored(tmp_path: Path) -> None:
    from isolate.oci import bundle as B
    from isolate.oci import warnings

    config = _config(process__capabilities={"bounding": [], "x": True, "y": [None]}, linux__sysctl={})
    B.load(_bundle(tmp_path, config))
    plan = B.build(config, str(tmp_path), None, {}, -1, -1, -1, -1, -1, False, None, b"{}")  # was TypeError
    for fd in plan.fds:
        os.close(fd)
    warnings._collected.clear()


def test_a_config_json_nested_too_deeply(tmp_path: Path) -> None:
    from isolate.oci import bundle as B

    with pytest.raises(ConfigError) as exc:  # was RecursionError
        B.load(_bundle(tmp_path, b'{"ociVersion": "1.0.0", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    one_line(exc)


def test_build_closes_the_namespace_files_it_opened_when_it_fails(tmp_path: Path) -> None:
    from isolate.oci import bundle as B
    from isolate.oci import warnings

    config = _config(linux__namespaces=[{"type": "network", "path": "/proc/self/ns/net"}, {"type": "mount"}])
    config["linux"]["sysctl"] = {}
    config["process"]["args"] = []  # refused after the namespace file was opened
    fds = _fds()
    with pytest.raises(ConfigError, match="process.args is empty"):
        B.build(config, str(tmp_path), None, {}, -1, -1, -1, -1, -1, False, None, b"{}")
    warnings._collected.clear()
    assert _fds() == fds  # the namespace descriptor was left open


def test_a_hugepage_size_cannot_be_a_path() -> None:
    from isolate.oci import cgroup as C

    for version in ("v1", "v2"):
        with pytest.raises(ConfigError, match="pageSize"):  # was written into a file name: hugetlb.../../x.max
            C.writes(version, {"hugepageLimits": [{"pageSize": "../../x", "limit": 1}]})


# ------------------------------------------------------------------------------ seccomp profiles
@pytest.mark.parametrize(
    "doc, named",
    [
        ([], "expected a JSON object"),
        ({"defaultAction": 5}, "defaultAction 5 is not an action"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [1], "action": "SCMP_ACT_ALLOW"}]}, "names"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {"names": ["read"]}}, "syscalls is not a list"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "1"}, "errnoRet '1'"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["read"],
                        "action": "SCMP_ACT_KILL",
                        "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "index 9",
        ),  # fmt: skip
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["read"],
                        "action": "SCMP_ACT_KILL",
                        "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "not a 64-bit value",
        ),  # fmt: skip
    ],
)
def test_a_seccomp_profile_of_the_wrong_shape(doc: Any, named: str) -> None:
    from isolate.plan.seccomp import profile_from_doc

    with pytest.raises(ConfigError) as exc:  # was AttributeError, TypeError, or OverflowError in libseccomp
        profile_from_doc(doc, "--seccomp p.json")
    assert named in one_line(exc)


def test_a_seccomp_rule_that_does_what_the_default_does_is_skipped() -> None:
    from isolate.plan.seccomp import compile_profile, profile_from_doc

    doc = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    assert compile_profile(profile_from_doc(doc, "p"))  # was PermissionError (EACCES) from libseccomp


def test_a_seccomp_rule_libseccomp_refuses() -> None:
    from isolate.plan.seccomp import compile_profile, profile_from_doc

    args = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]
    doc = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["write"], "action": "SCMP_ACT_KILL",
                                                           "args": args}]}  # fmt: skip
    with pytest.raises(ConfigError, match="libseccomp refuses") as exc:  # was OSError (EINVAL)
        compile_profile(profile_from_doc(doc, "p"))
    one_line(exc)


def test_a_seccomp_profile_nested_too_deeply(tmp_path: Path) -> None:
    from isolate.plan.seccomp import load_docker_profile

    path = tmp_path / "p.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ConfigError) as exc:  # was RecursionError
        load_docker_profile(str(path))
    one_line(exc)
