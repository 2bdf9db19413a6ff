"""What the replay does with an image the store does not vouch for: stop naming it, or leave it out of the run.

An image is not vouched for when its bytes differ from the crc32c the store recorded at
labelling (replaced by another photo of the same size, corrupted in place), or when it
cannot be read or decoded. Training on it would pair the stored labels with pixels the
teacher never saw. The default stops the run with one line naming the file and the
remedy; `skip` (`train --skip-corrupt`) leaves the image out of every later step of the
run instead, logs it and counts it (`images_skipped` in metrics.jsonl).

The crc32c of each image is checked the first time this process reads it, on the bytes
the replay reads anyway (`check`); after that an image costs one lookup. Files whose
modification time changed since labelling (`FileDigests.stale`, a stat at open) are
checked before the first step (`check_stale`), so an edited photo stops the run at once.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np

from fkd_dali.data.digest import crc32c
from fkd_dali.data.index import DatasetIndex
from fkd_dali.errors import CorruptImageError, ImageChangedError, ImageError

_log = logging.getLogger(__name__)
#: files with a changed modification time checked at open, at most (beyond: checked as they are read)
STALE_CHECK_LIMIT = 10_000
SKIP_HINT = "pass --skip-corrupt to leave it out of this run"


class ImageGuard:
    """Per process: the images checked against their digests, and those left out of the run.

    Args:
        index: the dataset (paths, and `digests` when the store records them).
        store: the store's URL, for messages.
        verify: check each file's crc32c against the store's digests (no-op without digests).
        skip: leave out an image that fails instead of stopping.
    """

    def __init__(self, index: DatasetIndex, store: str, verify: bool = True, skip: bool = False) -> None:
        self.index, self.store, self.skip = index, store, skip
        digests = index.digests if verify else None
        self.expected = None if digests is None else np.asarray(digests.crc32c, np.uint32)
        self.checked = np.zeros(len(index), bool) if self.expected is not None else None
        self.dropped: dict[int, str] = {}  # image id -> why it is left out of this run
        self._lock = threading.Lock()

    @property
    def verifies(self) -> bool:
        return self.expected is not None

    def admit(self, i: int, path: str, read: Callable[[str], np.ndarray]) -> np.ndarray | None:
        """The bytes of image `i` read by `read(path)`, checked; None when it is left out of the run.

        Raises:
            ImageError: the image fails (unreadable, cut off, another content) and `skip` is off.
        """
        if i in self.dropped:
            return None
        try:
            data = read(path)
            if self.checked is not None and not self.checked[i]:
                self.check(i, path, data)
        except ImageError as e:
            self.reject(i, e)
            return None
        return data

    def check(self, i: int, path: str, data: np.ndarray) -> None:
        """Compare the crc32c of `data` with the one the store recorded for image `i`."""
        if crc32c(data) != int(self.expected[i]):  # type: ignore[index]
            raise ImageChangedError(path, self.store)
        self.checked[i] = True  # type: ignore[index]

    def reject(self, i: int, error: ImageError) -> None:
        """Stop (raise `error` with the remedy), or with `skip` leave image `i` out of the run."""
        if not self.skip:
            if isinstance(error, ImageChangedError):
                raise ImageChangedError(error.path, self.store, f"restore the original file, regenerate the labels "
                                        f"for this folder, or {SKIP_HINT} (`fkd-dali labels verify STORE --data "
                                        "DIR` lists every such file)") from None
            raise CorruptImageError(error.path, f"{error.reason}; replace the file, or {SKIP_HINT}") from None
        with self._lock:
            if i not in self.dropped:
                self.dropped[i] = error.reason
                _log.warning("left out of this run (--skip-corrupt): %s: %s", error.path, error.reason)

    def check_stale(self, read: Callable[[str], np.ndarray], limit: int = STALE_CHECK_LIMIT) -> int:
        """Check now (reading them with `read`) the files whose modification time changed since labelling;
        how many were checked."""
        digests = self.index.digests
        if self.checked is None or digests is None or digests.stale is None:
            return 0
        stale = np.flatnonzero(digests.stale)
        if len(stale) > limit:
            _log.info("%d files have other modification times than when %s was labelled (a copy?); each is checked "
                      "against its crc32c when it is first read", len(stale), self.store)
            return 0
        for i in stale.tolist():
            self.admit(i, self.index.abspath(i), read)
        return len(stale)

    def drop_path(self, path: str, error: ImageError) -> bool:
        """Apply `reject` to the image at `path` (a decode error DALI raised); False if `path` is not an image."""
        i = self._id_of(path)
        if i is None:
            return False
        self.reject(i, error)
        return True

    def _id_of(self, path: str) -> int | None:
        for i in range(len(self.index)):
            if self.index.abspath(i) == path:
                return i
        return None
