"""Large FITS files written around the page cache (``O_DIRECT``), their bytes kept for the
first read.

An alert-production unit writes three 4096² planes files (the injected exposure, the
template, the difference image: ~200 MB each) and a later segment of the same unit,
usually on the same worker, reads each back. Through the page cache every such write first
copies the file into newly allocated cache pages. On a virtual machine whose memory balloon
hands free guest pages back to the host (virtio free page reporting, as on the machines
these benchmarks run on) each new page is also a host page fault: a 192 MB write cost 0.62–0.80 s
of system CPU, against 0.02–0.04 s with ``O_DIRECT`` (0.11–0.13 s of CPU in all; one core,
6 files each, ``docs/benchmarks.md``). But a file written with ``O_DIRECT`` is not in the page
cache, and reading it back through the page cache costs what the write saved (0.52–0.69 s of
system CPU per file): the latency benchmark's ``export_alerts`` went from ~1 s to ~2 s. So
the bytes written are also kept in this process (at most ``JOINTCAL_AP_KEEP_WRITTEN_MB``,
default :data:`KEEP_MB`; oldest out first), and the first :func:`open_hdulist` of that very
file (same inode, size and modification time) parses them from memory and lets them go.
Any other read of a large file (another process wrote it, or the bytes were let go) is done
with ``O_DIRECT`` into the process's heap: 0.10 s of CPU and 0.24–0.31 s of wall time per
192 MB file, against 0.54–0.73 s of CPU through the page cache when the file is not in it.

- :func:`write_hdulist` serialises an ``HDUList`` (astropy's own ``writeto``) into memory,
  writes the bytes with ``O_DIRECT`` and keeps them;
- :func:`open_hdulist` opens a file for reading: from the kept bytes or the bytes read with
  ``O_DIRECT`` (:meth:`astropy.io.fits.HDUList.fromstring`; the data arrays are then
  read-only views of those bytes, which the readers copy into native arrays), or, for small
  files, other filesystems and anything that is not a whole FITS file (whose errors and
  warnings the reader then gets), ``fits.open(path, memmap=False)``;
- :func:`forget_written` drops what is kept (the pipeline runner calls it when a run ends).

Ordinary writes and reads are used, silently, for files under :data:`MIN_BYTES`, on
filesystems that are not local disks (``tmpfs`` refuses ``O_DIRECT``; on NFS it would make
every request synchronous), where the open or a write is refused, and when the environment
variable ``JOINTCAL_AP_DIRECT_IO`` is ``0``/``off`` (``auto``, the default, decides by the
filesystem; ``on`` skips the filesystem check, not the fallbacks). The files are the same
bytes either way.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KEEP_MB",
    "MIN_BYTES",
    "SettingError",
    "direct_io_mode",
    "forget_written",
    "keep_limit",
    "kept_bytes",
    "open_hdulist",
    "uses_direct_io",
    "write_hdulist",
]

#: Files (and HDU lists) smaller than this go through the page cache as usual.
MIN_BYTES = 16 << 20
#: Alignment of the buffers, offsets and lengths of the direct requests (the logical block
#: size of any disk is at most this).
ALIGN = 4096
#: Bytes per direct request.
CHUNK = 8 << 20
#: Filesystems on local block devices, where ``auto`` uses direct I/O.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs"})

_ENV = "JOINTCAL_AP_DIRECT_IO"


class SettingError(RuntimeError):
    """A bad value of ``JOINTCAL_AP_DIRECT_IO`` or ``JOINTCAL_AP_KEEP_WRITTEN_MB`` (not a
    ValueError or OSError, which the file readers take for a bad file)."""


def direct_io_mode() -> str:
    """``"auto"``, ``"on"`` or ``"off"``, from ``JOINTCAL_AP_DIRECT_IO`` (:class:`SettingError`
    naming the variable for another value)."""
    value = os.environ.get(_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("1", "on", "true", "yes"):
        return "on"
    if value in ("0", "off", "false", "no"):
        return "off"
    raise SettingError(f"{_ENV}={value!r}: use auto, on or off")


def _aligned(nbytes: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` (a multiple of ALIGN) starting on an ALIGN boundary."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


@cache
def _mounts() -> tuple[tuple[str, str], ...]:
    """(mount point, filesystem type), longest mount points first (from /proc/self/mounts)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            rows = [line.split()[1:3] for line in fh if len(line.split()) >= 3]
    except OSError:
        return ()
    decoded = [(point.replace("\\040", " "), fstype) for point, fstype in rows]
    return tuple(sorted(decoded, key=lambda r: len(r[0]), reverse=True))


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (its directory must exist), or None."""
    real = os.path.realpath(path if path.is_dir() else path.parent)
    for point, fstype in _mounts():
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return fstype
    return None


def uses_direct_io(path: str | os.PathLike, nbytes: int) -> bool:
    """Whether a file of ``nbytes`` at ``path`` is written or read with ``O_DIRECT``."""
    if nbytes < MIN_BYTES or not hasattr(os, "O_DIRECT"):
        return False
    mode = direct_io_mode()
    if mode == "off":
        return False
    return mode == "on" or _filesystem(Path(path)) in LOCAL_FILESYSTEMS


def _write_direct(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` with ``O_DIRECT`` (blocks of :data:`CHUNK` bytes copied into
    an aligned buffer; the last one padded, then the file truncated to ``len(data)``). False
    where the filesystem refuses ``O_DIRECT`` (nothing is written then)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    try:
        src = np.frombuffer(data, np.uint8)
        block = _aligned(CHUNK)
        view = memoryview(block)
        for start in range(0, len(src), CHUNK):
            n = min(CHUNK, len(src) - start)
            block[:n] = src[start:start + n]
            padded = -(-n // ALIGN) * ALIGN
            block[n:padded] = 0
            done = 0
            while done < padded:
                try:
                    done += os.write(fd, view[done:padded])
                except OSError as exc:
                    if exc.errno == errno.EINVAL and start == 0 and done == 0:
                        return False
                    raise
        os.ftruncate(fd, len(src))
    finally:
        os.close(fd)
    return True


class _Collector:
    """The write-only binary file object astropy serialises into: the bytes, in order."""

    mode = "wb"

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: Any) -> int:
        chunk = bytes(memoryview(data).cast("B"))
        self.parts.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        """Nothing to flush."""

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


#: Megabytes of written files a process keeps for their first read (oldest out first), unless
#: ``JOINTCAL_AP_KEEP_WRITTEN_MB`` says otherwise (0: none). A 4096² AP unit writes ~830 MB
#: (calibrated and injected exposures, template, difference); what is let go is read with
#: ``O_DIRECT`` (~0.1 s of CPU per 192 MB). With 2048, a worker's later units took longer in
#: one run of the latency benchmark (``inject`` 1.9 s instead of ~0.6 s), probably as its
#: heap grew past what it had touched at warm-up.
KEEP_MB = 1024
_KEEP_ENV = "JOINTCAL_AP_KEEP_WRITTEN_MB"


def keep_limit() -> int:
    """Bytes of written files a process keeps (``JOINTCAL_AP_KEEP_WRITTEN_MB``, or
    :data:`KEEP_MB`); :class:`SettingError` naming the variable for a bad value."""
    text = os.environ.get(_KEEP_ENV, "").strip()
    if not text:
        return KEEP_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise SettingError(f"{_KEEP_ENV}={text!r}: give megabytes, a number >= 0 (0 keeps nothing)")
    return int(mb * (1 << 20))


_kept: OrderedDict[tuple[int, int, int, int], bytes] = OrderedDict()
_kept_lock = threading.Lock()


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells this file from any other, and from itself rewritten."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _keep(path: Path, data: bytes, limit: int) -> None:
    with _kept_lock:
        _kept[_identity(path)] = data
        while _kept and sum(len(b) for b in _kept.values()) > limit:
            _kept.popitem(last=False)


def kept_bytes() -> int:
    """Bytes of written files this process holds for their first read."""
    with _kept_lock:
        return sum(len(b) for b in _kept.values())


def forget_written() -> None:
    """Drop the bytes kept for first reads."""
    with _kept_lock:
        _kept.clear()


def _hdulist_bytes(hdul: Any) -> int:
    """The size of the file ``hdul`` makes (astropy's ``filebytes``, headers and padding
    included)."""
    return sum(int(hdu.filebytes()) for hdu in hdul)


def write_hdulist(hdul: Any, path: str | os.PathLike, **writeto: Any) -> None:
    """``hdul.writeto(path, **writeto)`` (``path`` is replaced; the caller makes it atomic),
    with ``O_DIRECT`` and the bytes kept for the first read where :func:`uses_direct_io`
    says so."""
    path = Path(path)
    if uses_direct_io(path, _hdulist_bytes(hdul)):
        limit = keep_limit()   # a bad setting fails before anything is written
        out = _Collector()
        hdul.writeto(out, **{k: v for k, v in writeto.items() if k != "overwrite"})
        data = out.parts[0] if len(out.parts) == 1 else b"".join(out.parts)
        out.parts.clear()
        if not _write_direct(path, data):
            with open(path, "wb") as fh:
                fh.write(data)
        _keep(path, data, limit)
        return
    hdul.writeto(path, **{"overwrite": True, **writeto})


def open_hdulist(path: str | os.PathLike) -> Any:
    """The file as an ``astropy.io.fits.HDUList`` (use it as a context manager): parsed from
    the bytes :func:`write_hdulist` kept for this very file (once), or from the whole file
    read with ``O_DIRECT`` where :func:`uses_direct_io` says so, or
    ``fits.open(path, memmap=False)``, whose errors and warnings a reader sees for a file
    that is not FITS or is cut short."""
    from astropy.io import fits

    path = Path(path)
    try:
        key = _identity(path)
    except OSError:
        key = None
    with _kept_lock:
        data = _kept.pop(key, None) if key is not None else None
    if data is None and key is not None and uses_direct_io(path, key[2]):
        # a file this process did not write (or no longer holds): read with O_DIRECT too, as a
        # file written so is not in the page cache, and filling it costs as much as the write
        # saved; anything but a whole FITS file goes to fits.open, for its errors and warnings
        data = _read_direct(path, key[2])
        if data is not None and not _whole_fits(data):
            data = None
    if data is not None:
        return _from_bytes(data)
    return fits.open(path, memmap=False)


def _from_bytes(data: bytes) -> Any:
    """An HDUList parsed from a whole file's bytes."""
    from astropy.io import fits

    return fits.HDUList.fromstring(data)


_BLOCK = 2880


def _whole_fits(data: bytes) -> bool:
    """Whether ``data`` is a sequence of complete FITS HDUs (headers of 2880-byte blocks up to
    ``END``; data of ``|BITPIX|/8 · GCOUNT · (PCOUNT + NAXIS1 ⋯ NAXISn)`` bytes, padded to
    2880) that ends where the bytes do."""
    pos, n = 0, len(data)
    if n == 0 or n % _BLOCK or not data.startswith(b"SIMPLE  ="):
        return False
    while pos < n:
        cards: dict[str, str] = {}
        while True:
            if pos + _BLOCK > n:
                return False
            block = data[pos:pos + _BLOCK]
            pos += _BLOCK
            ended = False
            for i in range(0, _BLOCK, 80):
                key = block[i:i + 8].rstrip()
                if key == b"END":
                    ended = True
                    break
                if block[i + 8:i + 10] == b"= ":
                    cards[key.decode("ascii", "replace")] = \
                        block[i + 10:i + 80].split(b"/")[0].strip().decode("ascii", "replace")
            if ended:
                break
        try:
            naxis = int(cards["NAXIS"])
            size = int(cards.get("GCOUNT", "1")) * (int(cards.get("PCOUNT", "0"))
                                                     + (int(np.prod([int(cards[f"NAXIS{k}"])
                                                                     for k in range(1, naxis + 1)]))
                                                        if naxis else 0))
            size *= abs(int(cards["BITPIX"])) // 8
        except (KeyError, ValueError):
            return False
        if naxis == 0:
            size = 0
        pos += -(-size // _BLOCK) * _BLOCK
    return pos == n


def _read_direct(path: Path, size: int) -> bytes | None:
    """The whole file, read with ``O_DIRECT`` (None where the filesystem refuses it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    try:
        buf = _aligned(-(-size // ALIGN) * ALIGN)
        view = memoryview(buf)
        done = 0
        while done < size:
            try:
                n = os.preadv(fd, [view[done:done + CHUNK]], done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and done == 0:
                    return None
                raise
            if n == 0:
                break
            done += n
    finally:
        os.close(fd)
    return buf[:min(done, size)].tobytes()
