"""Read and repair the HDF5 superblock of a file whose writer was killed (what ``h5clear -s`` does).

An HDF5 file written with superblock version 2 or 3 (``libver="latest"``, as every
recorded session) carries *file consistency flags* in its superblock: the library sets
them when it opens the file for writing (bit 0) or SWMR writing (bit 2) and clears them
when it closes the file. A writer killed while it holds the file open leaves them set,
and every later non-SWMR open fails with "file is already open for write (may use
<h5clear file> to clear file consistency flags)". :func:`clear_status_flags` clears them
and recomputes the superblock checksum (Jenkins' lookup3, as the library computes it);
when the end-of-file address recorded in the superblock lies beyond the file's real end
(the writer allocated space it never wrote) the file is padded with zeros up to it.

Superblock v2/v3 layout (HDF5 file format specification, section II.A)::

    offset  size  field
    0       8     signature  \\x89HDF\\r\\n\\x1a\\n
    8       1     version (2 or 3)
    9       1     size of offsets (O, normally 8)
    10      1     size of lengths
    11      1     file consistency flags
    12      O     base address
    12+O    O     superblock extension address
    12+2O   O     end-of-file address
    12+3O   O     root group object header address
    12+4O   4     checksum (lookup3 of every byte before it)

The superblock is at offset 0 or, after a user block, at 512, 1024, 2048, ... Only the
standard library is used (no h5py), so the file is never opened by the HDF5 library here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rt_decoder.errors import DataFormatError

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' ``hashlittle`` (lookup3), byte-wise: HDF5's metadata checksum.

    Parameters
    ----------
    data : bytes
        The bytes to hash.
    initval : int
        Initial value (HDF5 uses 0).

    Returns
    -------
    int
        The 32-bit checksum.
    """
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M32
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _M32
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M32
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M32
        a = (a - c) & _M32
        a ^= _rot(c, 4)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32
        a ^= _rot(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 4)
        b = (b + a) & _M32
        i += 12
    tail = data[i:]
    if not tail:
        return c
    tail = tail + bytes(12 - len(tail))
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return c


@dataclass(frozen=True)
class Superblock:
    """The fields of a v2/v3 superblock that matter for repair (offsets in bytes)."""

    offset: int  # where the superblock starts in the file
    version: int
    offset_size: int
    flags: int  # file consistency flags (0 when the last writer closed the file)
    base_address: int
    eof_address: int  # relative to base_address
    checksum_ok: bool


def _find_signature(f: "os.PathLike[str] | str") -> tuple[int, bytes]:
    size = os.path.getsize(f)
    offset = 0
    with open(f, "rb") as fh:
        while offset + len(SIGNATURE) <= size:
            fh.seek(offset)
            head = fh.read(12 + 5 * 8 + 4)
            if head[:8] == SIGNATURE:
                return offset, head
            offset = 512 if offset == 0 else offset * 2
    raise DataFormatError(f"{f}: not an HDF5 file (no HDF5 signature at offset 0, 512, 1024, ...)")


def read_superblock(path: str | Path) -> Superblock | None:
    """The superblock of ``path``; None for versions 0 and 1 (they carry no consistency flags).

    Raises
    ------
    DataFormatError
        When ``path`` is not an HDF5 file or its superblock is truncated.
    """
    offset, head = _find_signature(path)
    version = head[8]
    if version < 2:
        return None
    if version > 3:
        raise DataFormatError(f"{path}: HDF5 superblock version {version} is not known to this repair tool")
    o = head[9]
    if o not in (2, 4, 8):
        raise DataFormatError(f"{path}: HDF5 superblock declares {o}-byte offsets")
    end = 12 + 4 * o
    if len(head) < end + 4:
        raise DataFormatError(f"{path}: HDF5 superblock is truncated")
    base = int.from_bytes(head[12:12 + o], "little")
    eof = int.from_bytes(head[12 + 2 * o:12 + 3 * o], "little")
    stored = int.from_bytes(head[end:end + 4], "little")
    return Superblock(offset=offset, version=version, offset_size=o, flags=head[11], base_address=base,
                      eof_address=eof, checksum_ok=stored == lookup3(head[:end]))


@dataclass(frozen=True)
class SuperblockRepair:
    """What :func:`clear_status_flags` changed."""

    flags_before: int
    padded_bytes: int  # zeros appended so the file reaches its recorded end-of-file address


def clear_status_flags(path: str | Path) -> SuperblockRepair:
    """Clear the consistency flags of ``path`` in place and fix the superblock checksum.

    A no-op (``flags_before == 0``, nothing written) when the flags are already clear or the
    superblock has none (versions 0 and 1).

    Raises
    ------
    DataFormatError
        When the superblock cannot be parsed or its checksum was already wrong (damage this
        tool does not understand: the file is left unchanged).
    """
    sb = read_superblock(path)
    if sb is None:
        return SuperblockRepair(0, 0)
    if not sb.checksum_ok:
        raise DataFormatError(f"{path}: the HDF5 superblock checksum does not match: the file is damaged in a way "
                              "`recover` does not repair")
    padded = 0
    size = os.path.getsize(path)
    # the library takes the superblock's own offset as the base address (it corrects a stored one that differs)
    eof_abs = sb.offset + sb.eof_address
    if sb.flags == 0 and eof_abs <= size:
        return SuperblockRepair(0, 0)
    if eof_abs > size:
        # the library recorded an end of file it never reached (space allocated, not yet written):
        # pad with zeros so every address it may reference exists
        with open(path, "r+b") as fh:
            fh.truncate(eof_abs)
        padded = eof_abs - size
    o = sb.offset_size
    end = 12 + 4 * o
    with open(path, "r+b") as fh:
        fh.seek(sb.offset)
        head = bytearray(fh.read(end))
        head[11] = 0
        checksum = lookup3(bytes(head))
        fh.seek(sb.offset + 11)
        fh.write(b"\x00")
        fh.seek(sb.offset + end)
        fh.write(checksum.to_bytes(4, "little"))
        fh.flush()
        os.fsync(fh.fileno())
    return SuperblockRepair(sb.flags, padded)
