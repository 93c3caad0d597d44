"""An image's USER ("name", "uid", "name:group", "uid:gid") as numbers, from the image's own files."""

from __future__ import annotations

import os

from isolate.errors import ConfigError

_ID_MAX = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to setuid(2) and friends: never an id


def _id(text: str, what: str) -> int:
    """A numeric user or group id, ASCII digits only ("²".isdigit() is true, int("²") fails)."""
    if not (text.isascii() and text.isdigit()) or int(text) > _ID_MAX:
        raise ConfigError(f"{what} {text!r}: not a user or group id (0 to {_ID_MAX}); the image is malformed")
    return int(text)


def _lookup(lowers: list[str], filename: str, name: str) -> tuple[int, int] | None:
    """(id, group id) of ``name`` in the topmost layer's /etc/passwd or /etc/group."""
    from isolate.plan.steps import resolve_in_root

    for layer in lowers:  # top first: the first layer that has the file wins
        # The image's symlinks resolved inside its layer, never on the host: an /etc that links
        # to a host directory must not make a host file the image's passwd (CVE-2019-14271).
        try:
            path = resolve_in_root(layer, f"/etc/{filename}")
        except OSError:  # missing, or a loop: not in this layer
            continue
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) >= 4 and fields[0] == name:
                        where = f"the image's /etc/{filename}, entry {name!r}:"
                        uid = _id(fields[2], where)
                        return uid, _id(fields[3], where) if filename == "passwd" else uid
            return None
    return None


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def resolve_user(spec: str, lowers: list[str]) -> tuple[int, int]:
    user, _, group = spec.partition(":")
    if _is_id(user):
        uid = gid = _id(user, "image user")
        found = None
    else:
        found = _lookup(lowers, "passwd", user)
        if found is None:
            raise ConfigError(f"image user {user!r} is not in the image's /etc/passwd; run with --user UID[:GID]")
        uid, gid = found
    if group:
        if _is_id(group):
            gid = _id(group, "image group")
        else:
            grp = _lookup(lowers, "group", group)
            if grp is None:
                raise ConfigError(f"image group {group!r} is not in the image's /etc/group; run with --user UID:GID")
            gid = grp[0]
    return uid, gid
