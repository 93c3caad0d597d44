"""Checking the image store (``isolate image verify [--repair]``).

What is checked, cheapest first:

- **temporaries**: nothing is left in ``tmp/`` by an import or a removal that died (a directory
  there is locked by the live process working in it: an unlocked one is a leftover), and no
  unfinished atomic write of ``images.json`` or a blob;
- **images**: ``images.json`` reads, and each record (isolate's manifest of an image: its id,
  names, layers and config) is well-formed; its config blob is present and its sha256 is the
  image id; the config's ``rootfs.diff_ids`` are the record's layers; every layer is present;
- **blobs**: each blob's content matches its digest;
- **layers**: each layer directory is complete (its root, ``meta.json`` naming it, the record
  of its files with the digest ``meta.json`` keeps), and its files are still what the record
  says: none changed, deleted or added (:mod:`isolate.images.record`; symlinks never followed).
  A layer unpacked before isolate kept records gets a warning, not a problem: importing an image
  that holds it again unpacks it again with its record (unless a sandbox is using it).

``repair`` removes what cannot be trusted: the leftovers, every layer that fails (moved out of
``layers/`` in one rename, then deleted), and every image that is malformed or whose layers are
missing or removed; a missing or damaged config blob is written again from the image's record
when the record's config still has the image's digest.  A layer a running sandbox holds (its
shared lock, see ``_state.hold_shared``) is kept, and so are the images that use it: the report
says so, and ``verify`` keeps failing until it is repaired once the sandbox has ended.
Each layer is checked under a shared lock on it, so ``image rm`` and ``prune`` leave it alone
meanwhile and an import never replaces it under the check.
"""

from __future__ import annotations

import hashlib
import json
import os

from isolate.images import record as layer_record
from isolate.images.store import ImageStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Finding", "VerifyReport", "verify_store"]

_HEX = frozenset("0123456789abcdef")
MAX_FILES_SHOWN = 10  # per layer; the rest are counted


def _is_hex(name: str) -> bool:
    return len(name) == 64 and _HEX.issuperset(name)


def short(digest: str) -> str:
    return digest[:19]  # "sha256:" and 12 hex digits, as docker shows ids


class Finding:
    """One thing wrong (or, as a warning, not checkable): what it is, which, and the problem."""

    __slots__ = ("kind", "name", "problem", "resolution")

    def __init__(self, kind: str, name: str, problem: str) -> None:
        self.kind = kind  # "temporary", "store", "image", "blob", "layer"
        self.name = name  # a path below the store, an image's name or id, a digest
        self.problem = problem
        self.resolution = ""  # "removed", "restored", "kept: ..." once --repair acted

    def line(self) -> str:
        return f"{self.kind} {self.name}: {self.problem}"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "problem": self.problem, "resolution": self.resolution}


class VerifyReport:
    """What :func:`verify_store` found and, with ``repair``, did."""

    def __init__(self, root: str, repair: bool) -> None:
        self.root = root
        self.repair = repair
        self.images = 0
        self.layers = 0
        self.files = 0  # entries of layers compared with their records
        self.unused_layers: list[str] = []  # complete layers no image uses (`image prune` removes them)
        self.problems: list[Finding] = []
        self.warnings: list[Finding] = []

    @property
    def remaining(self) -> list[Finding]:
        """Problems still there: all of them without repair; those repair kept (in use) with it."""
        return [p for p in self.problems if p.resolution not in ("removed", "restored")]

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "repair": self.repair,
            "images": self.images,
            "layers": self.layers,
            "files": self.files,
            "unused_layers": self.unused_layers,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def summary(self) -> str:
        counts = f"{self.images} images, {self.layers} layers, {self.files} files checked"
        if not self.problems:
            return f"{self.root}: {counts}: ok"
        if self.repair:
            left = len(self.remaining)
            fixed = len(self.problems) - left
            return f"{self.root}: {counts}: {len(self.problems)} problems, {fixed} repaired, {left} left"
        return f"{self.root}: {counts}: {len(self.problems)} problems; `isolate image verify --repair` removes them"


def verify_store(store: ImageStore, repair: bool = False) -> VerifyReport:
    """Check every image, blob and layer of ``store`` and its temporaries; ``repair`` removes what
    fails (see the module's documentation).  The caller must hold none of the store's locks."""
    report = VerifyReport(store.root, repair)
    if not os.path.isdir(store.root):
        return report
    _temporaries(store, report)
    records = _read_records(store, report)
    blob_problems = _blobs(store, report)
    image_problems = {image_id: _image_problems(store, record, blob_problems) for image_id, record in records.items()}
    bad_layers, kept_layers = _layers(store, report, records)
    _images(store, report, records, image_problems, bad_layers, kept_layers)
    report.images = len(records)
    return report


# ---------------------------------------------------------------------- the parts
def _rel(store: ImageStore, path: str) -> str:
    return os.path.relpath(path, store.root)


def _temporaries(store: ImageStore, report: VerifyReport) -> None:
    from isolate.images.store import _remove

    for path in store.dead_temporaries():  # yielded under the lock on tmp/: removing here is safe
        finding = Finding("temporary", _rel(store, path), "left by an import or a removal that did not finish")
        report.problems.append(finding)
        if report.repair:
            _remove(path)
            finding.resolution = "removed"


def _read_records(store: ImageStore, report: VerifyReport) -> dict[str, dict[str, Any]]:
    path = os.path.join(store.root, "images.json")
    try:
        with open(path, "rb") as f:
            records = json.loads(f.read())
        if not isinstance(records, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        finding = Finding("store", "images.json", f"unreadable ({exc}): no image can be trusted")
        report.problems.append(finding)
        if report.repair:
            with store._lock("images"):
                os.rename(path, path + ".corrupt")
            finding.resolution = "removed"
            finding.problem += "; moved to images.json.corrupt"
        return {}
    return records


def _blobs(store: ImageStore, report: VerifyReport) -> dict[str, str]:
    """Blobs whose content does not match their name: {digest: problem}."""
    bad: dict[str, str] = {}
    directory = os.path.join(store.root, "blobs", "sha256")
    if not os.path.isdir(directory):
        return bad
    for entry in sorted(os.listdir(directory)):
        if ".tmp-" in entry:
            continue  # a temporary: _temporaries has it
        path = os.path.join(directory, entry)
        digest = f"sha256:{entry}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                found = "sha256:" + layer_record.hash_fd(fd)[1]
            finally:
                os.close(fd)
        except OSError as exc:
            found = f"unreadable ({exc.strerror})"
        if not _is_hex(entry):
            bad[digest] = "not a blob (its name is not a sha256 digest)"
        elif found != digest:
            bad[digest] = f"its content does not match its digest (found {short(found)})"
        else:
            continue
        finding = Finding("blob", short(digest) if _is_hex(entry) else entry, bad[digest])
        report.problems.append(finding)
        if report.repair:
            with store._lock("images"):
                os.unlink(path)
            finding.resolution = "removed"
    return bad


def _image_problems(store: ImageStore, record: Any, bad_blobs: dict[str, str]) -> list[str]:
    """What is wrong with one image record, its config and its blob (its layers: see _layers)."""
    if not isinstance(record, dict):
        return ["its record is not a JSON object"]
    image_id, names, layers, config = (record.get(k) for k in ("id", "names", "layers", "config"))
    if not isinstance(image_id, str) or not image_id.startswith("sha256:") or not _is_hex(image_id[7:]):
        return ["its record has no valid id"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ["its record's names are malformed"]
    if not isinstance(layers, list) or not all(isinstance(d, str) and _is_hex(d[7:]) for d in layers):
        return ["its record's layers are malformed"]
    if not isinstance(config, dict):
        return ["its record has no config"]
    problems = []
    raw = json.dumps(config, sort_keys=True).encode()
    if "sha256:" + hashlib.sha256(raw).hexdigest() != image_id:
        problems.append("its record's config does not have the image's digest (the record was altered)")
    blob = os.path.join(store.root, "blobs", "sha256", image_id[7:])
    if image_id in bad_blobs:
        problems.append(f"its config blob {bad_blobs[image_id]}")
    elif not os.path.isfile(blob):
        problems.append("its config blob is missing")
    rootfs = config.get("rootfs")
    if isinstance(rootfs, dict) and "diff_ids" in rootfs and rootfs["diff_ids"] != layers:
        problems.append("its config's rootfs.diff_ids are not its layers")
    for diff_id in layers:
        if not os.path.isdir(store.layer_dir(diff_id)):
            problems.append(f"its layer {short(diff_id)} is missing")
    return problems


def _layers(store: ImageStore, report: VerifyReport, records: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Check every layer directory; returns the diff ids of those that failed, and of those of
    them that repair kept (in use)."""
    directory = os.path.join(store.root, "layers")
    entries = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    used = {d for r in records.values() if isinstance(r, dict) for d in (r.get("layers") or []) if isinstance(d, str)}
    bad: set[str] = set()
    kept: set[str] = set()
    for entry in entries:
        if not _is_hex(entry):
            finding = Finding("layer", f"layers/{entry}", "not a layer (its name is not a sha256 digest)")
            report.problems.append(finding)
            if report.repair:
                _remove_layer(store, entry, finding)
            continue
        diff_id = f"sha256:{entry}"
        report.layers += 1
        lock = store._lock_fd(f"layer-{entry}", shared=True)
        try:
            problems, warning = _check_layer(store, entry, report)
        finally:
            os.close(lock)
        if warning:
            report.warnings.append(Finding("layer", short(diff_id), warning))
        for problem in problems:
            report.problems.append(Finding("layer", short(diff_id), problem))
        if problems:
            bad.add(diff_id)
            if report.repair and not _remove_layer(store, entry, *report.problems[-len(problems) :]):
                kept.add(diff_id)
        elif diff_id not in used:
            report.unused_layers.append(diff_id)
    return bad, kept


def _remove_layer(store: ImageStore, entry: str, *findings: Finding) -> bool:
    """Remove ``layers/ENTRY`` unless a sandbox holds it; False when it was kept."""
    fd = store._try_exclusive(f"layer-{entry}")
    if fd is None:
        for finding in findings:
            finding.resolution = "kept: a running sandbox uses it; repair again once it has ended"
        return False
    try:
        store.remove_layer_dir(entry)
    finally:
        os.close(fd)
    for finding in findings:
        finding.resolution = "removed"
    return True


def _check_layer(store: ImageStore, entry: str, report: VerifyReport) -> tuple[list[str], str]:
    """(problems, warning) of the layer ``layers/ENTRY``; its lock is held shared."""
    base = os.path.join(store.root, "layers", entry)
    if os.path.islink(base) or not os.path.isdir(base):
        return ["not a directory"], ""
    if os.path.islink(os.path.join(base, "root")) or not os.path.isdir(os.path.join(base, "root")):
        return ["its root directory is missing: half-made or half-removed"], ""
    try:
        with open(os.path.join(base, "meta.json"), "rb") as f:
            meta = json.loads(f.read())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return [f"its meta.json is missing or unreadable ({exc}): half-made"], ""
    if meta.get("diff_id") != f"sha256:{entry}":
        return [f"its meta.json names another layer ({meta.get('diff_id')})"], ""
    files = meta.get("files")
    if not isinstance(files, dict):
        return [], (
            "no record of its files (it was unpacked before isolate kept one), so they cannot be checked: "
            "import an image that has this layer again to record it, or remove the images using it"
        )
    try:
        with open(os.path.join(base, layer_record.FILE), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != files.get("sha256") or files.get("format") != layer_record.FORMAT:
            raise ValueError("its digest is not the one meta.json keeps")
        recorded = layer_record.decode(data)
    except (OSError, ValueError) as exc:
        return [f"the record of its files is missing or damaged ({exc})"], ""
    try:
        root = os.open(os.path.join(base, "root"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return [f"its root cannot be opened ({exc.strerror})"], ""
    differ: list[str] = []
    try:
        for path, fields in layer_record.scan(root):
            report.files += 1
            expected = recorded.pop(path, None)
            if expected is None:
                differ.append(f"{_show(path)}: added")
            elif expected != fields:
                differ.append(f"{_show(path)}: changed ({', '.join(layer_record.differences(expected, fields))})")
    finally:
        os.close(root)
    differ += [f"{_show(path)}: deleted" for path in recorded]
    if len(differ) > MAX_FILES_SHOWN:
        more = len(differ) - MAX_FILES_SHOWN
        differ = differ[:MAX_FILES_SHOWN] + [f"and {more} more files differ from the record"]
    return differ, ""


def _show(path: bytes) -> str:
    """A path in the layer, as the sandbox sees it, for a line of output: control characters
    escaped, undecodable bytes as \\xNN."""
    text = "/" if path == b"." else "/" + path.decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(text)[1:-1]


def _images(
    store: ImageStore,
    report: VerifyReport,
    records: dict[str, Any],
    image_problems: dict[str, list[str]],
    bad_layers: set[str],
    kept_layers: set[str],
) -> None:
    """Report each image's problems and those of its layers; with repair, remove the images that
    cannot be trusted (keeping those whose damaged layer a sandbox holds)."""
    doomed: list[str] = []
    restore: dict[str, bytes] = {}
    for image_id, record in records.items():
        problems = list(image_problems.get(image_id, []))
        layers = record.get("layers") if isinstance(record, dict) else None
        damaged = [d for d in layers or [] if d in bad_layers]
        problems += [f"its layer {short(d)} failed verification" for d in damaged]
        if not problems:
            continue
        names = record.get("names") if isinstance(record, dict) else None
        label = " ".join(names) if isinstance(names, list) and names and all(isinstance(n, str) for n in names) else ""
        findings = [Finding("image", label or short(image_id), p) for p in problems]
        report.problems += findings
        if not report.repair:
            continue
        only_blob = all(p.startswith("its config blob") for p in problems)
        if only_blob:  # the record's config still hashes to the id: the blob can be written again
            restore[image_id] = json.dumps(record["config"], sort_keys=True).encode()
            for finding in findings:
                finding.resolution = "restored"
        elif kept_layers.intersection(damaged):
            for finding in findings:
                finding.resolution = "kept: a running sandbox uses its damaged layer; repair again once it has ended"
        else:
            doomed.append(image_id)
            for finding in findings:
                finding.resolution = "removed"
    if doomed or restore:
        with store._lock("images"):
            for raw in restore.values():
                store.put_blob(raw)
            if doomed:
                current = store._records()
                for image_id in doomed:
                    current.pop(image_id, None)
                store._save(current)
