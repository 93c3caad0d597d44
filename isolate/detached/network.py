"""Connecting sandboxes: a veth pair between two network namespaces (``isolate net connect``).

A veth pair is two network interfaces joined back to back (veth(4)).  isolate creates one on
the host with pyroute2 (netlink), moves each end into one sandbox's network namespace,
gives the ends the two addresses of a /30 and brings them up inside, so the sandboxes reach
each other and nothing else: no route leads out of either namespace.
"""

from __future__ import annotations

import ipaddress
import os

from isolate import _libc
from isolate.errors import ConfigError, HostSupportError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def connect(first: dict[str, Any], second: dict[str, Any], subnet: str = "10.213.0.0/30") -> tuple[str, str]:
    """Join two running sandboxes' network namespaces; returns their addresses."""
    from isolate._state import status_of

    for record in (first, second):
        if status_of(record) != "running":
            raise ConfigError(f"{record['name']}: cannot connect: the sandbox is {status_of(record)}")
    try:
        net = ipaddress.ip_network(subnet)
        hosts = list(net.hosts())[:2]
    except ValueError as exc:
        raise ConfigError(f"--subnet {subnet!r}: {exc}") from None
    if len(hosts) < 2:
        raise ConfigError(f"--subnet {subnet}: needs room for two addresses (a /30 or larger)")
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise HostSupportError("isolate net needs pyroute2: pip install pyroute2") from None
    names = (f"iso{str(first['id'])[:8]}", f"iso{str(second['id'])[:8]}")
    try:
        _create_pair(IPRoute, names, first, second)
    except HostSupportError:
        raise
    except Exception as exc:  # noqa: BLE001 - netlink's answer, as one line
        raise HostSupportError(
            f"netlink refused the veth pair {names[0]}/{names[1]}: {exc} (already connected?)"
        ) from None
    for name, record, address in zip(names, (first, second), hosts):
        _configure(int(record["pid"]), name, str(address), net.prefixlen)
    return str(hosts[0]), str(hosts[1])


def _create_pair(IPRoute: Any, names: tuple[str, str], first: dict[str, Any], second: dict[str, Any]) -> None:  # noqa: N803
    with IPRoute() as ipr:
        ipr.link("add", ifname=names[0], kind="veth", peer=names[1])
        try:
            for name, record in zip(names, (first, second)):
                index = ipr.link_lookup(ifname=name)[0]
                ipr.link("set", index=index, net_ns_pid=int(record["pid"]))
        except BaseException:
            for name in names:  # an end left on the host: remove the pair (deleting one end does)
                if ipr.link_lookup(ifname=name):
                    ipr.link("del", ifname=name)
                    break
            raise


def _configure(pid: int, ifname: str, address: str, prefixlen: int) -> None:
    """Address and bring up ``ifname`` inside the network namespace of ``pid`` (in a child that setns()es)."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            _libc.setns(fd, _libc.CLONE_NEWNET)
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
                ipr.link("set", index=index, state="up")
            code = 0
        finally:
            os._exit(code)
    os.close(fd)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise HostSupportError(f"configuring {ifname} in the sandbox's network namespace failed")
