"""Valid documents the JSON strategies mutate: each holds every field its parser reads, so a
mutation hits real fields (a wrong type, a missing key, a huge number) rather than noise."""

from __future__ import annotations

import copy
from typing import Any

OCI_CONFIG: dict[str, Any] = {
    "ociVersion": "1.1.0",
    "process": {
        "terminal": False,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 0, "gid": 0, "umask": 18, "additionalGids": [1, 2]},
        "args": ["sh", "-c", "true"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "NOVALUE"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_AUDIT_WRITE", "CAP_KILL"],
            "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL"],
            "ambient": [],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}, {"type": "RLIMIT_CORE", "hard": -1}],
        "noNewPrivileges": True,
        "oomScoreAdj": 0,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "fuzz",
    "domainname": "example",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "rprivate"]},
        {"destination": "/data", "type": "bind", "source": "/", "options": ["rbind", "rro", "z"]},
    ],  # fmt: skip
    "hooks": {
        "prestart": [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 5}],
        "startContainer": [{"path": "/bin/true"}],
        "poststop": [{"path": "/bin/true"}],
    },
    "annotations": {"org.example": "value"},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000"},
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            ],
            "memory": {
                "limit": 536870912,
                "reservation": 1000,
                "swap": 1073741824,
                "kernel": -1,
                "kernelTCP": -1,
                "swappiness": 0,
                "disableOOMKiller": False,
            },
            "cpu": {
                "shares": 1024,
                "quota": 100000,
                "period": 500000,
                "realtimeRuntime": 950000,
                "realtimePeriod": 1000000,
                "cpus": "0-1",
                "mems": "0",
            },
            "pids": {"limit": 32771},
            "blockIO": {
                "weight": 10,
                "leafWeight": 10,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 9223372036854772000}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
            "unified": {"memory.high": "max"},
        },
        "cgroupsPath": "/isolate-fuzz/never-made",
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
            {"type": "cgroup"},
            {"type": "user"},
        ],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
        "seccomp": {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["getcwd", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
                },
            ],
        },
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    },  # fmt: skip
}

SECCOMP_PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "futex", "mmap"], "action": "SCMP_ACT_ALLOW"},
        {"name": "getpid", "action": "SCMP_ACT_LOG"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 8, "op": "SCMP_CMP_NE"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_KILL", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_GE"}]},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    ],
}  # fmt: skip


def image_config(diff_ids: list[str]) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "User": "fuzz:fuzz",
            "Env": ["PATH=/usr/bin:/bin", "A=b=c", "NOEQUALS"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["true"],
            "WorkingDir": "/work",
            "Labels": {"a": "b"},
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": "fuzz"}],
    }


def docker_manifest(config_name: str, layer_names: list[str]) -> list[dict[str, Any]]:
    return [{"Config": config_name, "RepoTags": ["fuzz/image:1"], "Layers": list(layer_names)}]


def oci_manifest(config: tuple[str, int], layers: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n} for d, n in layers],
    }


def oci_index(manifest: tuple[str, int], arch: str) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest[0],
                "size": manifest[1],
                "platform": {"os": "linux", "architecture": arch},
                "annotations": {"org.opencontainers.image.ref.name": "fuzz/image:1"},
            }
        ],
    }


def fresh(doc: Any) -> Any:
    return copy.deepcopy(doc)
