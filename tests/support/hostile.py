"""Hostile uploads, built from scratch: texts FFmpeg would open as network sessions or playlists, zips whose
members lie or inflate without bound, frames that decode to far more than they weigh, JSON that breaks parsers.
Each case says what the server must answer (status, field and a word of the message)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from .videos import png

SDP = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


DECODED_BYTES = 2 * 2**20  # the test server's budget for what one upload's frames decode to (43 frames of 128² RGB)


@dataclass
class Case:
    name: str
    request: dict  # httpx keyword arguments: files / data / json / content / headers
    status: int
    field: str
    word: str


def zip_members(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buf.getvalue()


def patch_sizes(data: bytes, *, size: int | None = None, compressed: int | None = None) -> bytes:
    """The first member's declared sizes rewritten, in its local header and in the central directory."""
    out = bytearray(data)
    local, central = out.find(b"PK\x03\x04"), out.find(b"PK\x01\x02")
    if compressed is not None:
        struct.pack_into("<I", out, local + 18, compressed)
        struct.pack_into("<I", out, central + 20, compressed)
    if size is not None:
        struct.pack_into("<I", out, local + 22, size)
        struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


def corrupt_deflate() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    out = bytearray(zip_members([("a.png", png(noise[..., None]))]))
    start = 30 + struct.unpack_from("<H", out, 26)[0] + struct.unpack_from("<H", out, 28)[0]
    for k in range(start + 2, start + 40):
        out[k] ^= 0x5A
    return bytes(out)


def file_case(name: str, blob: bytes, status: int, field: str, word: str, **data) -> Case:
    return Case(
        name, {"files": {"file": ("upload.mp4", blob, "application/octet-stream")}, "data": data}, status, field, word
    )


def corpus(max_decoded_bytes: int, frame: int = 128) -> list[Case]:
    """Every case against a server whose limits are max_frames 64, max_pixels frame², and max_decoded_bytes."""
    black = png(np.zeros((frame, frame, 3), np.uint8))
    over = max_decoded_bytes // (frame * frame * 3) + 1  # frames that decode past the budget (each ~300 bytes)
    deep = "[" * 100_000 + "]" * 100_000
    return [
        file_case("sdp (an RTP session)", SDP, 415, "file", "not a readable video"),
        file_case("ffconcat (reads local files)", b"ffconcat version 1.0\nfile /etc/passwd\n", 415, "file", "video"),
        file_case("hls playlist", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/hostname\n", 415, "file", "video"),
        file_case(
            "bzip2 member",
            zip_members([("a.png", b"\0" * 10_000_000)], zipfile.ZIP_BZIP2),
            415,
            "file:a.png",
            "stored or deflated",
        ),
        file_case(
            "lzma member",
            zip_members([("a.png", b"\0" * 1000)], zipfile.ZIP_LZMA),
            415,
            "file:a.png",
            "stored or deflated",
        ),
        file_case(
            "member that lies about its size",
            patch_sizes(zip_members([("a.png", b"\0" * 5_000_000)]), size=100),
            415,
            "file",
            "corrupt",
        ),
        file_case(
            "member declared larger than the limit",
            patch_sizes(zip_members([("a.png", black)]), size=2**31),
            413,
            "file:a.png",
            "inflates past",
        ),
        file_case(
            "compressed size past the data",
            patch_sizes(zip_members([("a.png", black)], zipfile.ZIP_STORED), compressed=500_000, size=500_000),
            415,
            "file",
            "corrupt",
        ),
        file_case("corrupt deflate data", corrupt_deflate(), 415, "file", "corrupt"),
        file_case("too many members", zip_members([(f"{i}.txt", b"") for i in range(500)]), 413, "file", "members"),
        file_case(
            "frames that decode past the budget",
            zip_members([(f"{i}.png", black) for i in range(over)]),
            413,
            "file",
            "decode to more than",
            resize="true",
        ),
        Case(
            "frames as JSON past the budget",
            {"json": {"frames": [_b64(black)] * over, "resize": True}},
            413,
            "frames",
            "decode to more than",
        ),
        Case(
            "JSON nested 100,000 deep",
            {"content": deep.encode(), "headers": {"Content-Type": "application/json"}},
            400,
            "body",
            "nested",
        ),
        Case(
            "an integer of 400 digits",
            {
                "content": json.dumps({"frames": [_b64(black)]})[:-1].encode() + b', "steps": ' + b"9" * 400 + b"}",
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "steps",
            "400 digits",
        ),
    ]


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
