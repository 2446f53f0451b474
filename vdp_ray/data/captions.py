"""Captions for clips: sidecar text files, a mapping file for a folder, MSR-VTT annotations, moving digits.

Every clip sample of a captioned source carries ``captions`` (a list of strings) in its JSON; training draws
one per step. Where captions come from, first match wins:

1. a sidecar beside the source: ``clip.mp4`` + ``clip.txt``; a frame folder ``f/`` + ``f.txt`` or
   ``f/captions.txt`` (one caption per line);
2. ``vdp shard --captions FILE``:
   - CSV with a header naming the video (``video``, ``video_id``, ``file``, ``path``, ``name`` or ``id``)
     and the caption (``caption``, ``text`` or ``sentence``); several rows per video add captions;
   - JSON ``{"clip.mp4": "a caption" | ["one", "another"], ...}`` or a list of ``{"video": ..., "caption": ...}``;
   - MSR-VTT annotation JSON (``{"sentences": [{"video_id": "video0", "caption": "..."}], ...}``).
   A video matches by file name or by stem (``video0`` matches ``video0.mp4``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

NAME_COLUMNS = ("video", "video_id", "file", "path", "name", "id")
TEXT_COLUMNS = ("caption", "text", "sentence")


class CaptionError(Exception):
    """A caption file that cannot be read; the message names the file and what was expected."""


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """{video name or stem: [captions]} from a CSV, a JSON mapping/list, or MSR-VTT annotation JSON."""
    path = Path(path)
    if not path.is_file():
        raise CaptionError(f"--captions {path}: no such file")
    table: dict[str, list[str]] = {}

    def add(name, caption, where: str) -> None:
        if not isinstance(name, (str, int)) or not isinstance(caption, str):
            raise CaptionError(
                f"{path}: {where}: expected a video name and a caption string, got {name!r}, {caption!r}"
            )
        if caption.strip():
            table.setdefault(_normal(str(name)), []).append(" ".join(caption.split()))

    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in reader.fieldnames or []]
            name_col = next((c for c in NAME_COLUMNS if c in fields), None)
            text_col = next((c for c in TEXT_COLUMNS if c in fields), None)
            if name_col is None or text_col is None:
                raise CaptionError(
                    f"{path}: the header needs a video column (one of {list(NAME_COLUMNS)}) and a "
                    f"caption column (one of {list(TEXT_COLUMNS)}); got {fields}"
                )
            original = dict(zip(fields, reader.fieldnames or [], strict=True))
            for n, row in enumerate(reader, start=2):
                add(row[original[name_col]], row[original[text_col]] or "", f"line {n}")
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CaptionError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("sentences"), list):  # MSR-VTT
            for i, item in enumerate(data["sentences"]):
                if not isinstance(item, dict):
                    raise CaptionError(f"{path}: sentences[{i}]: expected {{video_id, caption}}, got {item!r}")
                add(item.get("video_id"), item.get("caption"), f"sentences[{i}]")
        elif isinstance(data, dict):
            for name, value in data.items():
                for caption in value if isinstance(value, list) else [value]:
                    add(name, caption, f"key {name!r}")
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    raise CaptionError(f"{path}: [{i}]: expected {{video, caption}}, got {item!r}")
                name = next((item[c] for c in NAME_COLUMNS if c in item), None)
                text = next((item[c] for c in TEXT_COLUMNS if c in item), None)
                add(name, text, f"[{i}]")
        else:
            raise CaptionError(f"{path}: expected a JSON object or list, got {type(data).__name__}")
    else:
        raise CaptionError(f"--captions {path}: expected a .csv or .json file")
    if not table:
        raise CaptionError(f"{path}: no captions found")
    return table


def captions_for(source_path: str, kind: str, table: dict[str, list[str]] | None) -> list[str]:
    """The captions of one source: its sidecar file, else its entry in the mapping, else none."""
    path = Path(source_path)
    sidecars = (
        [path.with_suffix(".txt")] if kind == "video" else [path.with_name(path.name + ".txt"), path / "captions.txt"]
    )
    for sidecar in sidecars:
        if sidecar.is_file():
            lines = [" ".join(x.split()) for x in sidecar.read_text(encoding="utf-8").splitlines()]
            return [x for x in lines if x]
    if table:
        for name in (path.name, path.stem):
            if _normal(name) in table:
                return list(table[_normal(name)])
    return []


def _normal(name: str) -> str:
    return name.strip().replace("\\", "/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------ moving digits
def direction(velocity_yx: list[float]) -> str:
    """The main direction of a velocity in image coordinates (y grows downwards)."""
    vy, vx = velocity_yx
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def describe_digits(digits: list[int], velocities: list[list[float]]) -> list[str]:
    """Captions naming the digits and where each starts moving: 'a 3 moving left and a 7 moving down', and a
    shorter 'the digits 3 and 7'."""
    parts = [f"a {d} moving {direction(v)}" for d, v in zip(digits, velocities, strict=True)]
    names = [str(d) for d in digits]
    return [_join(parts), f"the digit {names[0]}" if len(names) == 1 else f"the digits {_join(names)}"]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
