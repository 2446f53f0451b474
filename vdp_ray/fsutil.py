"""Writing so that a reader sees the old result or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def swap_in(staging: Path, target: Path) -> None:
    """Replace folder ``target`` by the complete folder ``staging`` (the old one is removed after)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
