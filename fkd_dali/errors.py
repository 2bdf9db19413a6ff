"""The exception hierarchy: every error a user can act on derives from `FkdError`.

The CLI catches `FkdError`, prints its message and exits with status 2; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class FkdError(Exception):
    """Base class of all errors meant for the user (bad input, mismatched files)."""


class ConfigError(FkdError):
    """An option or a combination of options is invalid."""


class DatasetIndexError(FkdError):
    """The image folder is missing, empty, or holds an unreadable image."""


class ImageError(DatasetIndexError):
    """One image file cannot be used as the store describes it; `path` names it, `reason` says why."""

    def __init__(self, message: str, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class CorruptImageError(ImageError):
    """An image file cannot be decoded; `path` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}", path, reason)


class ImageChangedError(ImageError):
    """An image file's bytes differ from the digest its store recorded at labelling (replaced or edited)."""

    def __init__(self, path: str, store: str, remedy: str = "") -> None:
        reason = "its content differs from the file labelled (crc32c recorded at labelling): replaced or edited since"
        super().__init__(f"image {path} is not the file store {store} was labelled on: {reason}"
                         + (f"; {remedy}" if remedy else ""), path, reason)


class LabelStoreError(FkdError):
    """A soft-label store is missing, incomplete or malformed."""


class StoreSchemaError(LabelStoreError):
    """The store was written with a schema version this release does not read."""


class StoreDamageError(LabelStoreError):
    """Stored data cannot be trusted: an unreadable chunk (checksum, decoding) or fill values in a
    chunk flagged done (its file was deleted or lost). `array`, `chunk` (the chunk key, or None) and
    `images` ([start, stop) of the affected image chunk) say where; `labels repair` recomputes it."""

    def __init__(self, message: str, array: str, chunk: str | None, images: tuple[int, int]) -> None:
        super().__init__(message)
        self.array = array
        self.chunk = chunk
        self.images = images


class StoreMismatchError(LabelStoreError):
    """The store was written for another dataset, teacher or crop plan."""


class CropPlanError(FkdError):
    """The crop plan cannot be built (e.g. more crops per pass than stored)."""


class TeacherError(FkdError):
    """The teacher model or its checkpoint cannot be loaded."""


class PipelineError(FkdError):
    """A DALI pipeline failed for a reason the user can fix."""


class NonFiniteLossError(FkdError):
    """Training stopped at a NaN or infinite loss; the checkpoints written before it are kept."""


class CheckpointError(FkdError):
    """A training checkpoint does not fit the run that tries to resume from it."""
