"""Artifact catalogs on disk (models, worker binaries) and the vendors that fill them."""

from __future__ import annotations

from rbee.catalog.artifact import (
    ArtifactCatalog,
    ChecksumMismatchError,
    InvalidArtifactError,
    default_vendors,
    entry_dir,
)
from rbee.catalog.vendors import Progress, Sink, Vendor
from rbee.catalog.vendors.file import FileVendor

__all__ = [
    "ArtifactCatalog",
    "ChecksumMismatchError",
    "FileVendor",
    "InvalidArtifactError",
    "Progress",
    "Sink",
    "Vendor",
    "default_vendors",
    "entry_dir",
]
