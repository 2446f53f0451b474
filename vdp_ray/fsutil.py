"""Writing so that a reader sees the old result or the new one, never half of either; replacing only what we
wrote (a folder carrying our marker file); one writer per run folder.

Durable: a file is fsynced before the rename that publishes it, a folder's files and the folder itself before it
is swapped in, and the parent after. The swap keeps the previous folder as ``.NAME.old`` until the new one is in
place, and readers (``folder_to_read``) fall back to it for that moment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path


class OutputError(ValueError):
    """An output we may not write: it overlaps an input, is held by another run, or is not ours to replace."""


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:  # a filesystem that cannot open folders (some network mounts): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file and folder under ``folder``, and ``folder`` itself, flushed to disk."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        for name in dirs:
            _fsync(Path(root) / name, directory=True)
    _fsync(folder, directory=True)


def atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)


def old_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _leftover(name: str) -> bool:
    """What an interrupted write of ours leaves behind (and nobody else writes)."""
    return name in (".parts", ".vdp.lock") or (name.startswith(".") and name.endswith((".writing", ".staging", ".old")))


def replaceable(target: Path, marker: str) -> bool:
    """Whether ``target`` is ours to replace: absent, empty (but for our own leftovers), or holding ``marker``."""
    if not target.exists():
        return True
    if not target.is_dir():
        return False
    return (target / marker).is_file() or all(_leftover(p.name) for p in target.iterdir())


def check_replaceable(target: str | Path, marker: str, what: str) -> Path:
    """``target`` resolved (so ``.`` has a name), or OutputError when it holds something other than ``what``."""
    target = Path(target).expanduser().resolve()
    if target == Path(target.anchor):
        raise OutputError(f"{target}: refusing to write {what} over a filesystem root")
    if not replaceable(target, marker):
        kind = "a file" if not target.is_dir() else f"a folder without {marker}"
        raise OutputError(
            f"{target} exists and is {kind}, not {what}: refusing to replace what vdp did not write "
            "(give a new or empty folder)"
        )
    return target


def check_no_overlap(output: str | Path, inputs: Iterable[tuple[str, str | Path]]) -> None:
    """OutputError when the folder ``output`` is, holds, or lies inside one of the named inputs (``(name, path)``)."""
    out = Path(output).expanduser().resolve()
    for name, path in inputs:
        p = Path(path).expanduser().resolve()
        if out == p or p in out.parents or out in p.parents:
            raise OutputError(f"{output} overlaps {name} {path}: give the output a folder of its own")


def swap_in(staging: Path, target: Path, marker: str) -> None:
    """Replace folder ``target`` by the complete folder ``staging`` (both on one filesystem), only if ``target`` is
    ours (``marker``); the old one is kept as ``.NAME.old`` until the new one is in place, then removed."""
    target = check_replaceable(target, marker, f"a folder with {marker}")
    old = old_of(target)
    fsync_tree(staging)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    _fsync(target.parent, directory=True)
    shutil.rmtree(old, ignore_errors=True)


def folder_to_read(target: Path, marker: str) -> Path:
    """``target``, or its previous version while a swap is between its two renames."""
    target = Path(target)
    if not (target / marker).is_file() and (old_of(target) / marker).is_file():
        return old_of(target)
    return target


@contextlib.contextmanager
def run_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold ``folder/.vdp.lock`` for the block: a second writer (another `vdp train` / `vdp tune` on the same
    folder, on this machine or one sharing the filesystem's locks) gets OutputError naming the holder's pid.
    URIs (s3://...) have no locks: nothing is held."""
    if "://" in str(folder):
        yield
        return
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".vdp.lock"
    with open(path, "a+") as f:  # closing it releases the lock (so does the holder's death)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise OutputError(
                f"{folder} is in use by {what} (pid {holder}): wait for it to finish, or give another folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
