"""Every file the project writes is whole or absent, inside the folder it was told to write, and safe to
open in a spreadsheet. One helper for each of those rules, used by every writer.

- `atomic_write(path)`: a file object on a temporary name in the same folder; on a clean exit the
  data is flushed, fsynced and renamed over `path`, on any exception (a full disk, a kill signal
  turned into an exception, a bug) the temporary file is removed and `path` is left as it was.
  A full disk or a refused write is one `UserError` naming the path.
- `write_json`, `write_text`, `write_bytes`: the common cases of it.
- `inside(path, root)`: refuse a path that would leave `root` (output names never come from data,
  but this is the check that holds even if one did).
- `csv_cell` / `csv_rows`: OWASP's neutralisation of spreadsheet formulas (a cell beginning with
  `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`); numbers are written as numbers.
- `open_csv`: every CSV is read and written as UTF-8, whatever the locale says.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import IO, Iterable, Iterator

from runtime.errors import UserError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _io_error(path: str, e: OSError) -> UserError:
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return UserError(f"{path}: could not write ({why}); nothing was left under that name")


def _temporary(path: str) -> str:
    """The temporary name beside `path`: fixed, so the next run replaces what a killed one left."""
    return f"{path}.partial"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """Write `path` whole or not at all: a temporary file beside it, renamed over it at the end."""
    with atomic_files([path], mode, encoding=encoding, newline=newline) as (f,):
        yield f


@contextlib.contextmanager
def atomic_files(paths: list[str], mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[list[IO]]:
    """Several files that belong together (influencers.csv and posts.csv): all written and fsynced under
    temporary names, then all renamed; if any write fails, none is renamed and the old ones stay."""
    binary = "b" in mode
    tmps = [_temporary(p) for p in paths]
    files: list[IO] = []
    try:
        for t in tmps:
            files.append(open(t, mode, **({} if binary else {"encoding": encoding, "newline": newline})))
        yield files
        for f in files:
            f.flush()
            os.fsync(f.fileno())
        for f in files:
            f.close()
        for t, p in zip(tmps, paths):
            os.replace(t, p)
    except BaseException as e:
        for f in files:
            with contextlib.suppress(OSError):
                f.close()
        for t in tmps:
            _remove(t)
        if isinstance(e, OSError) and _about_writing(e, e.filename or tmps[0]):
            where = next((p for t, p in zip(tmps, paths) if e.filename == t), paths[0])
            raise _io_error(where, e) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` for writers that take a name (h5py, torch.save to a name),
    renamed over `path` when the block ends cleanly and removed otherwise."""
    tmp = _temporary(path) + suffix
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if _about_writing(e, tmp):
            raise _io_error(path, e) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _about_writing(e: OSError, tmp: str) -> bool:
    """An error of the write itself (the disk, the file), not of what the caller did inside the block."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG) or e.filename in (tmp, None)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def swap_folder(new: str, old: str) -> None:
    """The whole-folder counterpart of atomic_write: `new` (complete) takes `old`'s name. An existing `old` is
    moved aside to `old.replaced` first and removed after, so at every moment `old` is the previous folder
    whole, the new one whole, or (killed between the two renames) absent with both kept on disk."""
    aside = f"{old}.replaced"
    if os.path.isdir(aside):
        shutil.rmtree(aside)
    had = os.path.isdir(old)
    if had:
        os.replace(old, aside)
    os.replace(new, old)
    if had:
        shutil.rmtree(aside, ignore_errors=True)


def require_space(path: str, nbytes: int, margin: int = 16 << 20) -> None:
    """Refuse, as one line naming `path`, to write `nbytes` more where the disk has less free than that
    plus a margin. For writers that crash rather than fail on a full disk (HDF5 through h5py: its
    buffered metadata fails at close, then at exit, with a segmentation fault); others get ENOSPC."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    free = shutil.disk_usage(folder).free
    if free < nbytes + margin:
        raise UserError(f"{path}: the disk is full or nearly ({free / 1e6:,.1f} MB free, about "
                        f"{(nbytes + margin) / 1e6:,.1f} MB needed for the next part); nothing was left under that name")


def write_json(path: str, obj, indent: int | None = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent)


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def inside(path: str, root: str) -> str:
    """`path` made absolute, refused unless it lies inside `root` (links resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise UserError(f"{path}: refusing to write outside {root}")
    return real


def dataset_file(root: str, rel: str) -> str | None:
    """The real path of the dataset's file `rel` when it stays inside the dataset, else None.

    Inside by its text ('..' resolved) and by its real path, which must lie inside the real path of the
    dataset's top folder it names (`image/` for `image/a.jpg`): that folder may itself be a link to
    another disk, but a link inside it pointing elsewhere is refused."""
    if not rel or not root or os.path.isabs(rel):
        return None
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, rel))
    if not path.startswith(base.rstrip(os.sep) + os.sep):
        return None
    top = os.path.realpath(os.path.join(base, os.path.relpath(path, base).split(os.sep)[0]))
    real = os.path.realpath(path)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        return None
    return real


def outside_inputs(out: str, inputs: dict[str, str]) -> None:
    """Refuse an output folder inside (or equal to) an input folder (a store, a run folder): a later
    `extract index --overwrite` or `heads fit --overwrite` of that input would delete it."""
    real = os.path.realpath(out)
    for what, folder in inputs.items():
        if not folder or "://" in folder:
            continue
        base = os.path.realpath(folder)
        if os.path.commonpath([real, base]) == base:
            raise UserError(f"{out}: inside the {what} {folder}; write it somewhere else (nothing was written)")


def csv_cell(value):
    """A cell as a spreadsheet will not run it: text beginning like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _number(value):
        return "'" + value
    return value


def _number(text: str) -> bool:
    """A plain number written as text ("-0.25"): a spreadsheet reads it as a number, never a formula."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text.lower().lstrip("+-") not in ("inf", "infinity", "nan")


def csv_rows(rows: Iterable[Iterable]) -> Iterator[list]:
    for row in rows:
        yield [csv_cell(v) for v in row]


def open_csv(path: str, mode: str = "r"):
    """A CSV file opened as UTF-8 with the csv module's newline handling (`utf-8-sig` when reading, so
    a spreadsheet's byte-order mark is not part of the first header)."""
    return open(path, mode, encoding="utf-8-sig" if "r" in mode else "utf-8", newline="")
