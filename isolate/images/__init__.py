"""Images: a content-addressed layer store, OCI and docker archive import, OCI export, verification."""

from isolate.images.store import DEFAULT_ROOT, Image, ImageStore, default_root, parse_ref
from isolate.images.unpack import DiskFullError, ImageError, LayerInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from isolate.images.verify import Finding, VerifyReport, verify_store

__all__ = [
    "DEFAULT_ROOT",
    "DiskFullError",
    "Finding",
    "Image",
    "ImageStore",
    "ImageError",
    "LayerInfo",
    "VerifyReport",
    "default_root",
    "parse_ref",
    "verify_store",
]


def __getattr__(name: str) -> object:
    """The verification API, imported when first used: a run with an image never needs it."""
    if name in ("Finding", "VerifyReport", "verify_store"):
        from isolate.images import verify

        return getattr(verify, name)
    raise AttributeError(f"module 'isolate.images' has no attribute {name!r}")
