"""Image files: listing folders, reading with OpenCV under a pixel cap, encoding; errors as one line.

The cap is checked on the image's header before anything is decoded (PNG, JPEG,
BMP, WebP, TIFF, PNM), so a 1 MB file that claims 20000 x 20000 pixels costs
nothing; OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS, set to the same cap
unless the user set it) guards any other format it can read.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

from winclip.runtime.defaults import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.files import FileRefused, not_regular, read_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


def max_pixels() -> int:
    """The decoded-pixel cap: WINCLIP_MAX_PIXELS if set, else the default."""
    value = os.environ.get("WINCLIP_MAX_PIXELS", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_IMAGE_PIXELS


def max_image_bytes() -> int:
    """The encoded-size cap of one image file: WINCLIP_MAX_IMAGE_MB (megabytes) if set, else the default."""
    value = os.environ.get("WINCLIP_MAX_IMAGE_MB", "")
    return int(value) << 20 if value.isdigit() and int(value) > 0 else MAX_IMAGE_BYTES


os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels()))
import cv2  # noqa: E402  (after the limit above: OpenCV reads it at its first decode)


class ImageReadError(WinclipError):
    """An image that cannot be read or decoded, with a one-line reason."""


def display_path(path: str | Path) -> str:
    """A path as text that any JSON reader accepts (undecodable bytes shown as U+FFFD)."""
    return os.fsencode(path).decode("utf-8", "replace")


def list_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Image files under a folder, sorted, and one message per sub-folder that could not be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"image folder not found: {display_path(folder)}")
    problems: list[str] = []

    def report(exc: OSError) -> None:
        problems.append(f"cannot read folder {display_path(exc.filename or folder)}: {exc.strerror or exc}")

    found = []
    for top, dirs, files in os.walk(folder, onerror=report):
        dirs.sort()
        for name in files:
            path = Path(top) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:  # a FIFO or a device named like an image would hang or never end: reported, never read
                problem = not_regular(path)
            except OSError as exc:  # a dangling symlink, a file gone meanwhile
                problem = exc.strerror or str(exc)
            if problem:
                problems.append(f"cannot read {display_path(path)}: {problem}")
            else:
                found.append(path)
    return sorted(found), problems


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of common image formats, or None when unknown."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"1234567":
            return _pnm_size(data)
    except (struct.error, ValueError, LookupError):
        raise ImageReadError("corrupt image header") from None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("bad marker")
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[pos + 5:pos + 9])
            return w, h
        pos += 2 + length
    raise ValueError("no frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ValueError("unknown WebP chunk")


def _tiff_size(data: bytes) -> tuple[int, int]:
    end = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", data[4:8])
    (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
    size = {}
    for i in range(count):
        tag, kind, _, value = struct.unpack(end + "HHI4s", data[ifd + 2 + 12 * i:ifd + 14 + 12 * i])
        if tag in (256, 257):
            size[tag] = struct.unpack(end + ("H" if kind == 3 else "I"), value[:2] if kind == 3 else value)[0]
    return size[256], size[257]


def _pnm_size(data: bytes) -> tuple[int, int]:
    head = data[:4096].decode("ascii", "replace")
    if head.startswith("P7"):  # PAM: "KEY value" lines up to ENDHDR; the pixels that follow are not text
        fields = {}
        for line in head.split("ENDHDR", 1)[0].splitlines()[1:]:
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
        return int(fields["WIDTH"]), int(fields["HEIGHT"])
    tokens = [t for line in head.splitlines() for t in line.split("#")[0].split()]
    return int(tokens[1]), int(tokens[2])


def decode_image(data: bytes, name: str = "image", limit: int | None = None) -> np.ndarray:
    """Decode encoded bytes as stored (8/16-bit, gray/BGR/BGRA), refusing more than `limit` pixels."""
    limit = max_pixels() if limit is None else limit
    try:
        size = header_size(data)
    except ImageReadError:
        raise ImageReadError(f"cannot decode {name}: corrupt image header") from None
    if size is not None and size[0] * size[1] > limit:
        raise ImageReadError(f"{name} is {size[0]}x{size[1]} pixels, more than the {limit} allowed "
                             f"(WINCLIP_MAX_PIXELS or --max-pixels raises the cap)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except cv2.error as exc:
        raise ImageReadError(f"cannot decode {name}: {first_line(exc)[:200]}") from None
    if image is None:
        raise ImageReadError(f"cannot decode {name}: not an image or corrupt")
    if image.shape[0] * image.shape[1] > limit:  # a format without a header we parse
        raise ImageReadError(f"{name} is {image.shape[1]}x{image.shape[0]} pixels, more than the {limit} allowed")
    return image


def read_image_bytes(path: str | Path) -> bytes:
    """The encoded bytes of an image file: a regular file under the size cap, or ImageReadError."""
    try:
        return read_regular(path, max_image_bytes(), "image")
    except FileRefused as exc:
        raise ImageReadError(f"{exc} (WINCLIP_MAX_IMAGE_MB raises the size cap)" if "allowed" in str(exc)
                             else str(exc)) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None


def read_image(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The image as stored (8/16-bit, gray/BGR/BGRA), or ImageReadError with a one-line reason."""
    return decode_image(read_image_bytes(path), display_path(path), limit)


def read_image_folder(folder: str | Path, count: int | None = None) -> list[np.ndarray]:
    """The first `count` images of a folder, sorted by path (all when None); every one must decode.

    A memory built from a partly unreadable set would silently be a different K
    than the one asked for, so any failure is an ImageReadError.
    """
    if count is not None and count < 1:
        raise ImageReadError(f"the number of images must be >= 1, got {count}")
    paths, problems = list_images(folder)
    if problems:
        raise ImageReadError(problems[0])
    wanted = count if count is not None else max(len(paths), 1)
    if len(paths) < wanted:
        raise ImageReadError(f"{display_path(folder)} has {len(paths)} images, fewer than the {wanted} asked for")
    return [read_image(p) for p in paths[:wanted]]


# --- encoding what the runtime writes
def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("PNG encoding failed")
    return encoded.tobytes()


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return encoded.tobytes()
