"""What a store vouches for about each image file: a crc32c of its bytes and its modification time.

The dataset fingerprint covers paths and byte sizes only, so a photo replaced by another
of the same size, or corrupted in place, used to train silently on pixels the teacher
never saw. At labelling every file is read anyway (the strict decode), so its crc32c
costs a few microseconds more; the store keeps it (`images/crc32c`) with the file's
modification time (`images/mtime`). Training checks the crc32c of every file on the bytes
the replay reads anyway, the first time this process reads the file; the modification
times give a cheap check at open that finds edited files before the first step.

crc32c is computed by the library google-crc32c ships (hardware crc32 instructions) on
the array in place, called through ctypes so the GIL is released while it runs: the
check runs in the replay's file-reading threads beside the training loop. Where that
library is not found, `google_crc32c.value` on a copy of the bytes is used (the same
value, a copy and the GIL slower).
"""
from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

DIGEST_NAME = "crc32c"  # what `dataset.file_digest` in a store's attributes says its digests are


@dataclass(frozen=True)
class FileDigests:
    """Per image of an index: crc32c of the whole file and its modification time (ns) when labelled.

    `stale` is set when the index was checked against a folder (`fkd_dali.store.checks.
    index_for_store`): the files whose modification time on disk differs from the recorded
    one, which a training run checks before its first step.
    """

    crc32c: np.ndarray  # (N,) uint32
    mtime_ns: np.ndarray  # (N,) int64
    stale: np.ndarray | None = None  # (N,) bool

    def __len__(self) -> int:
        return len(self.crc32c)


def _ctypes_crc32c() -> Callable[[int, int, int], int] | None:
    """crc32c_extend(crc, address, length) of the library in google-crc32c's wheel, or None."""
    try:
        import google_crc32c
    except ImportError:
        return None
    here = os.path.dirname(os.path.dirname(google_crc32c.__file__))
    for path in sorted(glob.glob(os.path.join(here, "google_crc32c.libs", "libcrc32c*.so*"))):
        try:
            fn = ctypes.CDLL(path).crc32c_extend  # CDLL releases the GIL during the call
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        return fn
    return None


_EXTEND = _ctypes_crc32c()


def crc32c(data: np.ndarray | bytes) -> int:
    """crc32c (Castagnoli, as zarr's codec and google-crc32c compute it) of a file's bytes."""
    if _EXTEND is not None and isinstance(data, np.ndarray) and data.flags.c_contiguous:
        return int(_EXTEND(0, data.ctypes.data, data.nbytes))
    import google_crc32c

    return int(google_crc32c.value(data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()))


def file_crc32c(path: str) -> int:
    """crc32c of a whole file (reads it)."""
    return crc32c(np.fromfile(path, dtype=np.uint8))
