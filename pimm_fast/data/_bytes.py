"""Vectorized byte-level parsing helpers (numpy only): chunked line reading, integer and hex tokens.

Everything works on a chunk held as a ``uint8`` array that ends with a newline. Errors inside a chunk are
raised as :class:`ChunkError` with the byte offset of the bad spot; :func:`locate` turns that into a file
line number (by counting newlines, which is only done on the error path).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np


class DataFormatError(ValueError):
    """A data file or value does not follow its documented format (the message names file and line/row)."""


class ChunkError(Exception):
    """Raised inside a chunk parser: ``offset`` is the byte offset of the problem inside the chunk."""

    def __init__(self, offset: int, message: str):
        super().__init__(message)
        self.offset = int(offset)
        self.message = message


def iter_chunks(path: Path, chunk_bytes: int = 64 << 20, hasher=None,
                max_line_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (byte offset in the file, uint8 array of whole lines ending in b'\\n').

    The last line gets a newline if the file lacks one. Memory: about two chunks at a time, plus one line
    when a line is longer than a chunk; a line longer than ``max_line_bytes`` is a DataFormatError.
    ``hasher`` (a hashlib object) is fed every byte of the file as read.
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    with open(path, "rb") as f:
        offset = 0
        carry = b""
        while True:
            block = f.read(chunk_bytes)
            if hasher is not None and block:
                hasher.update(block)
            if not block:
                if carry:
                    yield offset, np.frombuffer(carry + b"\n", dtype=np.uint8)
                return
            data = carry + block if carry else block
            cut = data.rfind(b"\n")
            if cut < 0:  # a line longer than the chunk: keep reading
                if max_line_bytes is not None and len(data) > max_line_bytes:
                    raise DataFormatError(f"{path}, line {locate(path, offset)}: a line longer than "
                                          f"{max_line_bytes:,} bytes (the limit for this file's columns)")
                carry = data
                continue
            whole = data[:cut + 1]
            carry = data[cut + 1:]
            yield offset, np.frombuffer(whole, dtype=np.uint8)
            offset += len(whole)


def locate(path: Path, offset: int) -> int:
    """1-based number of the line that holds byte ``offset`` of ``path``."""
    count = 0
    remaining = offset
    with open(path, "rb") as f:
        while remaining > 0:
            block = f.read(min(remaining, 16 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


def line_of(path: Path, base: int, err: ChunkError) -> DataFormatError:
    return DataFormatError(f"{path}, line {locate(path, base + err.offset)}: {err.message}")


def token_text(buf: np.ndarray, start: int, end: int, limit: int = 40) -> str:
    raw = bytes(buf[start:min(end, start + limit)])
    text = raw.decode("utf-8", errors="replace")
    return repr(text + ("..." if end - start > limit else ""))


_POW10 = [10 ** k for k in range(19)]


def parse_uint(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, what: str) -> np.ndarray:
    """Non-negative decimal integers in buf[starts[i]:ends[i]] as int64 (at most 18 digits each)."""
    n = len(starts)
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    lens = ends - starts
    bad = (lens < 1) | (lens > 18)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ChunkError(starts[i], f"{what} {token_text(buf, starts[i], ends[i])} is not a non-negative integer")
    maxlen = int(lens.max())
    last = ends - 1
    for k in range(maxlen):
        digit = buf[last - k] - np.uint8(48)  # uint8: non-digits wrap to > 9
        if k == 0:
            inside = None
            bad = digit > 9
        else:
            inside = lens > k
            bad = inside & (digit > 9)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ChunkError(starts[i], f"{what} {token_text(buf, starts[i], ends[i])} is not a non-negative integer")
        if inside is None:
            out += digit
        else:
            out += np.where(inside, digit, 0).astype(np.int64) * _POW10[k]
    return out


_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def parse_hex(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, what: str) -> np.ndarray:
    """Hexadecimal tokens of 1..16 digits as uint64 (the Ali-CCP common_feature_index)."""
    n = len(starts)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return out
    lens = ends - starts
    bad = (lens < 1) | (lens > 16)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ChunkError(starts[i], f"{what} {token_text(buf, starts[i], ends[i])} is not 1-16 hex digits")
    last = ends - 1
    for k in range(int(lens.max())):
        nib = _HEX[buf[last - k]]
        inside = lens > k
        bad = inside & (nib > 15)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ChunkError(starts[i], f"{what} {token_text(buf, starts[i], ends[i])} is not 1-16 hex digits")
        out |= np.where(inside, nib, 0).astype(np.uint64) << np.uint64(4 * k)
    return out


_NAME_MASK = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [(1 << 64) - 1], dtype=np.uint64)


def pack_names(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int = 8) -> np.ndarray:
    """Short names (<= ``width`` <= 8 bytes) packed little-endian into uint64 keys; longer or empty names get 0.

    One unaligned 8-byte load per name (a strided uint64 view of the chunk), masked to the name's length.
    """
    n = len(buf)
    lens = ends - starts
    out = np.zeros(len(starts), dtype=np.uint64)
    if len(starts) == 0:
        return out
    ok = (lens >= 1) & (lens <= width)
    if n >= 8:
        words = np.ndarray((n - 7,), dtype="<u8", buffer=buf, strides=(1,))
        fast = ok & (starts <= n - 8)
        out[fast] = words[starts[fast]] & _NAME_MASK[lens[fast]]
    else:
        fast = np.zeros(len(starts), dtype=bool)
    for i in np.flatnonzero(ok & ~fast):  # names within 8 bytes of the chunk's end: a handful at most
        out[i] = int.from_bytes(bytes(buf[starts[i]:ends[i]]), "little")
    return out


def name_key(name: str) -> int:
    raw = name.encode()
    if not 1 <= len(raw) <= 8:
        raise ValueError(f"name {name!r} must have 1..8 bytes")
    return int.from_bytes(raw, "little")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
