"""Images: a content-addressed layer store, OCI and docker archive import, OCI export."""

from isolate.images.store import DEFAULT_ROOT, Image, ImageStore, default_root, parse_ref
from isolate.images.unpack import ImageError, LayerInfo

__all__ = ["DEFAULT_ROOT", "Image", "ImageStore", "ImageError", "LayerInfo", "default_root", "parse_ref"]
