"""The dataset index: an ordered, fingerprinted list of the images of an ImageNet-style folder.

Layout `root/<class>/<file>` (files in sub-folders of a class folder count too, as in
torchvision's ImageFolder); class ids are the positions of the sorted class folder
names and files follow ImageFolder's order; files left out are listed with why.
Unlike ImageFolder, symbolic links never list one real file twice or under another
class (`_walk`). Image sizes come from file headers (no decode), in stored orientation:
EXIF rotation is ignored everywhere in fkd-dali so that a box means the same pixels in
every pipeline. The fingerprint covers paths, byte sizes and class names, so a store can
tell whether it was made for the folder it is used with (`scan_folder` lists what that
check needs without opening an image; `fkd_dali.store.checks.index_for_store` does it);
`digests` (crc32c and mtime per file, `fkd_dali.data.digest`) say whether the files are
still the ones labelled.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import simplejpeg
from PIL import Image
from tqdm import tqdm

from fkd_dali.data.digest import FileDigests, crc32c
from fkd_dali.errors import CorruptImageError, DatasetIndexError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: torchvision's other image extensions: ImageFolder would include such files, so they are
#: reported as left out rather than ignored like other files.
OTHER_IMAGE_EXTENSIONS = (".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DatasetIndex:
    """Paths (relative, '/'-separated), class ids, (height, width) and byte sizes."""

    root: str
    paths: list[str]
    classes: np.ndarray  # (N,) int32
    sizes: np.ndarray  # (N, 2) int32: height, width
    nbytes: np.ndarray  # (N,) int64
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable images left out by --skip-corrupt (stored)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of every file left out
    digests: FileDigests | None = None  # crc32c and mtime of each file when labelled (None: not recorded)

    def __post_init__(self) -> None:
        n = len(self.paths)
        if not (len(self.classes) == len(self.sizes) == len(self.nbytes) == n):
            raise DatasetIndexError("index arrays disagree in length")
        if self.digests is not None and len(self.digests) != n:
            raise DatasetIndexError("index digests disagree in length")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.paths, self.nbytes, self.class_names)

    def abspath(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])


def dataset_fingerprint(paths: Sequence[str], nbytes: Sequence[int], class_names: Sequence[str]) -> str:
    """sha256 over class names, then one `path<TAB>bytes` line per image, in index order."""
    h = hashlib.sha256()
    h.update(("\n".join(class_names) + "\n\n").encode())
    for p, b in zip(paths, nbytes):
        h.update(f"{p}\t{int(b)}\n".encode())
    return h.hexdigest()


def _list_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetIndexError(
            f"data folder {root} does not exist or is not a folder; expected root/<class>/<image>.JPEG")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetIndexError(f"data folder {root} has no class folders; expected root/<class>/<image>.JPEG")
    for name in names:
        if not _is_utf8(name):
            raise DatasetIndexError(f"class folder {_printable(str(root / name))} has a name that is not valid "
                                    "UTF-8; rename it (class names are stored as text)")
    return names


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as lone surrogates
        return False
    return True


def _printable(path: str) -> str:
    """A path with undecodable bytes shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class _Found:
    """Image files of one class folder as listed, before sorting and de-duplication."""

    entries: list[tuple[str, str, int, int, int, int, bool]] = field(default_factory=list)
    # (relative folder, file name, bytes, mtime ns, st_dev, st_ino, reached through a symbolic link)
    left_out: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FolderListing:
    """The image files of a folder in index order (what the fingerprint and the index are built from)."""

    class_names: list[str]
    paths: list[str]
    labels: list[int]
    nbytes: list[int]
    mtime_ns: list[int]
    left_out: list[tuple[str, str]]


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _folder_link_reason(target: str, root_real: str, class_real: dict[str, str], own: str) -> str | None:
    """Why a folder link to the real path `target` inside class folder `own` is left out; None to follow it.

    Following it could list files of another class under this one (a link into another
    class folder, or to the data root or above, which holds them all), or list this
    class's own files twice (a link within its class folder, a loop).
    """
    if _is_within(target, class_real[own]):
        return "folder already listed (symbolic link loop or duplicate link)"
    if _is_within(class_real[own], target) or _is_within(root_real, target):
        return f"folder link to {target} leads back to the data root or above (a loop): not followed"
    other = next((c for c, real in class_real.items() if _is_within(target, real)), None)
    if other is not None:
        return f"folder link into class folder {other!r}: its files belong to that class, not followed"
    return None


def _list_images(root: Path, class_name: str, class_real: dict[str, str]) -> _Found:
    """The image files under one class folder (its sub-folders too), following safe symbolic links.

    Walks with `os.scandir` (the file type comes with the listing, so knowing a link costs
    no call) and stats each image once. Folder links are followed unless
    `_folder_link_reason` says why not; a folder reached twice is listed once. Files
    with an image extension that cannot be indexed (a dangling or looping link, a name
    that is not valid UTF-8, an image type fkd-dali does not decode) are left out with
    the reason, never silently. Order and duplicates are settled by `_walk`.
    """
    folder = root / class_name
    root_real = os.path.realpath(root)
    out = _Found()
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, bool]] = [(str(folder), folder.is_symlink())]
    while stack:
        dirpath, via_link = stack.pop()
        rel_dir = _rel(root, dirpath)
        try:
            st = os.stat(dirpath)
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as e:
            out.left_out.append((rel_dir, f"folder cannot be listed ({e.strerror})"))
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symbolic link (a loop, or a second link)
            out.left_out.append((rel_dir, "folder already listed (symbolic link loop or duplicate link)"))
            continue
        seen.add((st.st_dev, st.st_ino))
        for entry in _add_files(entries, rel_dir, via_link, out):
            link = entry.is_symlink()
            why = _folder_link_reason(os.path.realpath(entry.path), root_real, class_real, class_name) \
                if link else None
            if why:
                out.left_out.append((f"{rel_dir}/{entry.name}", why))
            else:
                stack.append((entry.path, via_link or link))
    return out


def _add_files(entries: list[os.DirEntry], rel_dir: str, via_link: bool, out: _Found) -> list[os.DirEntry]:
    """Add the image files among one folder's `entries` to `out`; the sub-folders, to walk next.

    The hot loop of listing ImageNet (1.28M files at every training start): one stat per
    image, everything else from the listing itself.
    """
    folders = []
    dir_utf8 = _is_utf8(rel_dir)
    append = out.entries.append
    for entry in entries:
        try:
            if entry.is_dir():  # follows links; False for a dangling or looping one
                folders.append(entry)
                continue
        except OSError:
            pass
        name = entry.name
        dot = name.rfind(".")
        ext = name[dot:].lower() if dot > 0 and name[:dot].lstrip(".") else ""  # as os.path.splitext
        if ext not in IMAGE_EXTENSIONS:
            if ext in OTHER_IMAGE_EXTENSIONS:
                out.left_out.append((f"{rel_dir}/{name}", f"{ext} images are not decoded by fkd-dali (convert to "
                                                          "JPEG or PNG)"))
            continue
        reason, st = _file_status(entry, dir_utf8)
        if st is not None:
            append((rel_dir, name, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, via_link or entry.is_symlink()))
        else:
            out.left_out.append((f"{rel_dir}/{name}", reason))
    return folders


def index_order_key(rel_path: str, class_position: Mapping[str, int]) -> tuple[int, str, str]:
    """Sort key of a relative image path in index order: class, then folder path, then file name.

    The order `_walk` gives (ImageFolder's); paths of a valid index are strictly
    increasing under it.
    """
    folder, _, name = rel_path.rpartition("/")
    return class_position.get(rel_path.split("/", 1)[0], -1), folder, name


def _rel(root: Path, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _file_status(entry: os.DirEntry, dir_utf8: bool) -> tuple[str, os.stat_result | None]:
    """("", stat) for an image file to index; (reason, None) for one to leave out."""
    if not (dir_utf8 and _is_utf8(entry.name)):
        return "file name is not valid UTF-8 (rename it)", None
    try:
        st = entry.stat()
    except FileNotFoundError:
        return ("dangling symbolic link" if entry.is_symlink() else "disappeared while indexing"), None
    except OSError as e:
        return ("symbolic link loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})"), None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", None
    return "", st


def _walk(root_path: Path) -> FolderListing:
    """Every image of the folder in index order, each real file once; no file is opened.

    Per class folder: ImageFolder's order (folders sorted by path, files by name). A file
    reached through a symbolic link that is also reached another way (a link to a file of
    another class, two links to one file) is the same real file: it is kept where it is
    not a link, else at its first place in index order, and left out elsewhere with the
    reason. Plain files are never dropped (only links are suspected: inode numbers of some
    network file systems are not unique), so a folder without links lists exactly as before.
    """
    class_names = _list_classes(root_path)
    class_real = {name: os.path.realpath(root_path / name) for name in class_names}
    entries: list[tuple] = []
    labels: list[int] = []
    left_out: list[tuple[str, str]] = []
    for cid, name in enumerate(class_names):
        files = _list_images(root_path, name, class_real)
        files.entries.sort()  # by folder, then name (a pair no two files share)
        entries += files.entries
        labels += [cid] * len(files.entries)
        left_out += files.left_out
    drop, dropped = _once_each(entries)
    if drop:
        entries = [e for i, e in enumerate(entries) if i not in drop]
        labels = [c for i, c in enumerate(labels) if i not in drop]
    left_out = sorted((_printable(p), why) for p, why in left_out + dropped)
    listing = FolderListing(class_names, [f"{e[0]}/{e[1]}" for e in entries], labels, [e[2] for e in entries],
                            [e[3] for e in entries], left_out)
    present = set(labels)
    for cid, name in enumerate(class_names):
        if cid not in present:
            _no_images(root_path / name, [x for x in left_out if x[0].split("/", 1)[0] == name])
    return listing


def _once_each(entries: list[tuple]) -> tuple[set[int], list[tuple[str, str]]]:
    """Positions of the link occurrences of a real file listed elsewhere, and (path, why) of each.

    `entries` rows: (folder, name, bytes, mtime, st_dev, st_ino, reached through a link).
    """
    if not any(e[6] for e in entries):
        return set(), []
    first: dict[tuple[int, int], int] = {}
    for i, e in enumerate(entries):  # the place of each real file: its plain occurrence, else its first one
        j = first.get((e[4], e[5]))
        if j is None or (entries[j][6] and not e[6]):
            first[(e[4], e[5])] = i
    drop, dropped = set(), []
    for i, e in enumerate(entries):
        j = first[(e[4], e[5])]
        if i != j and e[6]:
            drop.add(i)
            dropped.append((f"{e[0]}/{e[1]}", f"same file as {entries[j][0]}/{entries[j][1]} (reached again through "
                                              "a symbolic link): listed once"))
    return drop, dropped


def _no_images(folder: Path, left_out: list[tuple[str, str]]) -> None:
    more = f" ({len(left_out)} file(s) left out, e.g. {left_out[0][0]}: {left_out[0][1]})" if left_out else ""
    raise DatasetIndexError(
        f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}){more}; remove it or add its images")


def list_folder(root: str | os.PathLike[str]) -> FolderListing:
    """Every image of a folder in index order with its byte size and modification time; no file is opened."""
    return _walk(Path(root).expanduser().resolve())


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, relative paths, byte sizes) of a folder, in `build_index` order.

    Lists directories and stats files only (no image is opened): enough for the
    fingerprint, and fast on ImageNet-sized folders. Raises as `build_index` does for a
    missing folder, a folder without class folders or a class folder without images.
    """
    listing = _walk(Path(root).expanduser().resolve())
    return listing.class_names, listing.paths, np.array(listing.nbytes, dtype=np.int64)


_TAIL_WINDOW = 64 * 1024


def check_complete_file(data: np.ndarray, path: str) -> None:
    """Reject empty files and JPEG/PNG data cut off before its end marker (costs nothing).

    libjpeg-turbo decodes a truncated JPEG into grey pixels without failing, which
    would silently poison labels. Cameras may append data after the end marker, so the
    marker is looked for beyond the last bytes; but not in the first half, where an
    EXIF thumbnail carries an end marker of its own.
    """
    if len(data) == 0:
        raise CorruptImageError(path, "empty file")
    head = data[:8].tobytes()
    is_jpeg, is_png = head[:2] == b"\xff\xd8", head == b"\x89PNG\r\n\x1a\n"
    # almost every file ends with its marker (JPEG: FF D9; PNG: the IEND chunk and its CRC)
    if (is_jpeg and data[-2:].tobytes() == b"\xff\xd9") or (is_png and data[-8:-4].tobytes() == b"IEND"):
        return
    tail = data[-max(1024, min(_TAIL_WINDOW, len(data) // 2)):].tobytes()
    if is_jpeg and b"\xff\xd9" not in tail:
        raise CorruptImageError(path, "truncated JPEG (no end-of-image marker)")
    if is_png and b"IEND" not in tail:
        raise CorruptImageError(path, "truncated PNG (no IEND chunk)")


def check_image_data(data: bytes | np.ndarray, path: str) -> tuple[int, int]:
    """(height, width) of an image after a strict decode of its bytes.

    libjpeg-turbo treats corrupt entropy-coded data (a zeroed block, a few random bytes)
    as a recoverable warning ("Corrupt JPEG data: premature end of data segment"),
    prints it without a file name and decodes grey or garbled pixels; DALI does the same,
    and PIL silences the warning. So JPEGs are decoded with simplejpeg in strict mode,
    which raises on those warnings. The decode is scaled to 1/8 and grey: the whole
    entropy-coded stream is still read (where corruption shows), at a third to a half of
    the cost of a full decode. Other formats get a full PIL decode.

    Raises:
        CorruptImageError: the data cannot be decoded cleanly; the message names `path`.
    """
    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    check_complete_file(array, path)
    buf = array.tobytes()
    if buf[:2] == b"\xff\xd8":
        try:
            height, width = simplejpeg.decode_jpeg_header(buf)[:2]
            simplejpeg.decode_jpeg(buf, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=True)
            return int(height), int(width)
        except ValueError as e:
            if _decodes_leniently(buf):  # only a warning: the pixels are garbage
                raise CorruptImageError(path, str(e)) from None
            # a fatal error of the TurboJPEG API (e.g. an unusual layout it does not take): PIL decides
    try:
        with Image.open(io.BytesIO(buf)) as im:
            width, height = im.size
            im.load()
    except Exception as e:  # PIL raises many types for bad files
        raise CorruptImageError(path, f"{type(e).__name__}: {e}") from e
    return int(height), int(width)


def _decodes_leniently(buf: bytes) -> bool:
    try:
        simplejpeg.decode_jpeg(buf, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=False)
    except ValueError:
        return False
    return True


def read_image_header(path: str, full_decode: bool = False) -> tuple[int, int, int]:
    """(height, width, byte size) of an image from its header; `full_decode` also decodes it strictly.

    Raises:
        CorruptImageError: the header (or, with `full_decode`, the data: `check_image_data`) is unreadable.
    """
    try:
        if full_decode:
            with open(path, "rb") as f:
                data = f.read()
            height, width = check_image_data(data, path)
            return height, width, len(data)
        nbytes = os.path.getsize(path)
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError as e:
        raise DatasetIndexError(f"image {path} disappeared while indexing") from e
    except CorruptImageError:
        raise
    except Exception as e:  # PIL raises many types for bad files
        raise CorruptImageError(path, f"{type(e).__name__}: {e}") from e
    return height, width, nbytes


def read_sizes(root: str | os.PathLike[str], paths: Sequence[str], workers: int = 16) -> np.ndarray:
    """(N, 2) int32 (height, width) of the images `paths` under `root`, from their headers (threads).

    Raises:
        CorruptImageError: a header cannot be read (the message names the file).
    """
    base = Path(root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        heads = list(pool.map(lambda rel: read_image_header(str(base / rel))[:2], paths, chunksize=256))
    return np.array(heads, dtype=np.int32).reshape(-1, 2)


def build_index(root: str | os.PathLike[str], workers: int = 16, skip_corrupt: bool = False,
                progress: bool = False, decode: bool = False, digest: bool = False) -> DatasetIndex:
    """Index an ImageNet-style folder, reading headers in parallel threads.

    Folder rules (`_walk`): torchvision ImageFolder's, sub-folders of class folders
    included, each real file once; files it would take that cannot be indexed are in
    `left_out`.

    Args:
        root: folder with one sub-folder per class.
        workers: header-reading threads (I/O bound; more than cores is fine).
        skip_corrupt: leave out (and record in `skipped`) the images that fail the
            check, instead of raising on the first one; implies `decode`.
        progress: show a progress bar (files/s, ETA) for folders of 10,000+ files.
        decode: check every image with a strict decode (`check_image_data`), not only
            its header: label generation does, so that no corrupt image gets labels.
            Implies `digest` (the bytes are read anyway).
        digest: record each file's crc32c and modification time (`DatasetIndex.digests`,
            what a store vouches for); reads every file.
    """
    root_path = Path(root).expanduser().resolve()
    listing = _walk(root_path)
    class_names, rel_paths, labels, left_out = listing.class_names, listing.paths, listing.labels, listing.left_out
    decode = decode or skip_corrupt
    digest = digest or decode

    def header(rel: str) -> tuple[int, int, int, int] | str:
        try:
            return read_image_digest(str(root_path / rel), decode) if digest \
                else (*read_image_header(str(root_path / rel)), 0)
        except CorruptImageError as e:
            if skip_corrupt:
                return e.reason
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(rel_paths), unit="file", unit_scale=True, desc="index", dynamic_ncols=True,
                 disable=not progress or len(rel_paths) < 10_000) as bar:
        results = []
        for r in pool.map(header, rel_paths, chunksize=256):
            results.append(r)
            bar.update(1)
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    corrupt = [(rel_paths[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if not keep:
        raise DatasetIndexError(f"no readable images under {root_path}")
    meta = np.array([results[i] for i in keep], dtype=np.int64).reshape(-1, 4)
    digests = FileDigests(meta[:, 3].astype(np.uint32), np.array(listing.mtime_ns, np.int64)[keep]) \
        if digest else None
    return DatasetIndex(
        root=str(root_path),
        paths=[rel_paths[i] for i in keep],
        classes=np.array([labels[i] for i in keep], dtype=np.int32),
        sizes=meta[:, :2].astype(np.int32),
        nbytes=meta[:, 2].copy(),
        class_names=class_names,
        skipped=[p for p, _ in corrupt],
        left_out=sorted(left_out + [(p, f"cannot be decoded: {why}") for p, why in corrupt]),
        digests=digests,
    )


def read_image_digest(path: str, decode: bool = True) -> tuple[int, int, int, int]:
    """(height, width, byte size, crc32c) of an image file, read once; `decode`: strictly decoded too.

    Raises:
        CorruptImageError: the file cannot be read, or (with `decode`) decoded cleanly.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as e:
        raise DatasetIndexError(f"image {path} disappeared while indexing") from e
    except OSError as e:
        raise CorruptImageError(path, f"cannot read: {e.strerror or e}") from e
    if decode:
        height, width = check_image_data(data, path)
    else:
        height, width = _header_size(data, path)
    return height, width, len(data), crc32c(data)


def _header_size(data: np.ndarray, path: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            width, height = im.size
    except Exception as e:  # PIL raises many types for bad files
        raise CorruptImageError(path, f"{type(e).__name__}: {e}") from e
    return int(height), int(width)
