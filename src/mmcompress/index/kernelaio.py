"""Batches of ``O_DIRECT`` reads through Linux kernel AIO (``io_submit`` / ``io_getevents``).

A search wants its few dozen page reads in flight at once. Issued from Python threads
(one ``pread`` each) they top out at 15-20k reads/s on 2 cores, since every read hands the
GIL over twice; the device takes several times that. The kernel's native AIO interface
submits a whole batch in one system call and waits for it in another, both made through
``ctypes`` with the GIL released; that is how DiskANN reads its SSD index (libaio). We call
the three system calls ourselves because no maintained Python binding of libaio or io_uring
is in the locked stack, and this ABI (two fixed structs, stable since Linux 2.6) is small.

One :class:`AioContext` per thread: completions of one context are reaped by the thread that
submitted them. Where the kernel refuses AIO (another OS, a sandbox that filters the calls),
:func:`available` is False and the caller reads with threads instead.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform

import numpy as np

from mmcompress.index import kernels

# x86-64 and arm64 system call numbers (the only ones we map; elsewhere AIO is unavailable)
_SYSCALLS = {
    "x86_64": {"setup": 206, "destroy": 207, "getevents": 208, "submit": 209},
    "aarch64": {"setup": 0, "destroy": 1, "submit": 2, "getevents": 4},
    "arm64": {"setup": 0, "destroy": 1, "submit": 2, "getevents": 4},
}
_NR = _SYSCALLS.get(platform.machine())
_IOCB_CMD_PREAD = 0
# struct iocb and struct io_event of <linux/aio_abi.h> (little-endian field order)
IOCB = np.dtype([("data", "<u8"), ("key", "<u4"), ("rw_flags", "<i4"), ("opcode", "<u2"),
                 ("reqprio", "<i2"), ("fildes", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"),
                 ("offset", "<i8"), ("reserved2", "<u8"), ("flags", "<u4"), ("resfd", "<u4")])
IO_EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])
WAIT_SECONDS = 30.0  # a read batch not done by then is an I/O error, not a hang
_IOCB_WORDS = IOCB.itemsize // 8  # both structs as rows of 64-bit words (little-endian)
_EVENT_WORDS = IO_EVENT.itemsize // 8


def _fill_iocbs(words: np.ndarray, fd: int, bufs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                token: int, first: int, k: int) -> None:
    """Reads ``first:first + k`` of batch ``token`` into the iocb slots ``words[:k]`` (each a
    struct iocb as eight 64-bit words: data, key | rw_flags, opcode | reqprio | fildes, buf,
    nbytes, offset, reserved2, flags | resfd)."""
    for j in range(k):
        words[j, 0] = (np.uint64(token) << np.uint64(32)) | np.uint64(first + j)
        words[j, 2] = np.uint64(fd) << np.uint64(32)  # opcode 0 (IOCB_CMD_PREAD), reqprio 0
        words[j, 3] = bufs[first + j]
        words[j, 4] = np.uint64(lengths[first + j])
        words[j, 5] = np.uint64(offsets[first + j])


def _file_events(words: np.ndarray, r: int, got: np.ndarray) -> None:
    """The results of ``r`` completions (struct io_event as four 64-bit words: data, obj, res,
    res2) into ``got``, indexed by the read's number in its batch (all of one batch)."""
    for j in range(r):
        got[np.int64(words[j, 0] & np.uint64(0xFFFFFFFF))] = np.int64(words[j, 2])


if kernels.AVAILABLE:  # one compiled call each instead of a dozen numpy ones per batch
    import numba

    _fill_iocbs = numba.njit(cache=True, nogil=True)(_fill_iocbs)
    _file_events = numba.njit(cache=True, nogil=True)(_file_events)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc() -> ctypes.CDLL | None:
    if _NR is None or os.name != "posix" or platform.system() != "Linux":
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL
    except OSError:
        return None
    lib.syscall.restype = ctypes.c_long
    return lib


_LIBC = _libc()


@functools.cache
def available() -> bool:
    """Whether this kernel takes AIO system calls from this process (probed once)."""
    if _LIBC is None:
        return False
    try:
        AioContext(1).close()
    except OSError:
        return False
    return True


class AioContext:
    """A kernel AIO context of ``depth`` slots, used by one thread at a time.

    :meth:`read` keeps up to ``limit`` (default ``depth``) reads in flight, submitting the
    next as each finishes. :meth:`submit` puts a batch in flight and returns at once, and
    :meth:`wait` collects it: several batches may be in flight together (their reads share the
    ``depth`` slots), so a caller works on one while the next is read. On any failure after a
    submission the context is destroyed (which waits for the reads in flight, so no buffer is
    written after the error is raised) and the error raised; the context cannot be used
    again."""

    def __init__(self, depth: int) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "kernel AIO is not available on this platform")
        self.depth = max(1, int(depth))
        self._ctx = ctypes.c_ulong(0)
        if _LIBC.syscall(_NR["setup"], ctypes.c_uint(self.depth), ctypes.byref(self._ctx)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"io_setup({self.depth}): {os.strerror(e)}")
        self._iocbs = np.zeros(self.depth, dtype=IOCB)
        self._iocbs["opcode"] = _IOCB_CMD_PREAD
        self._iocb_words = self._iocbs.view(np.uint64).reshape(self.depth, _IOCB_WORDS)
        self._ptrs = (self._iocbs.ctypes.data + IOCB.itemsize * np.arange(self.depth)).astype(np.uint64)
        self._events = np.zeros(self.depth, dtype=IO_EVENT)
        self._event_words = self._events.view(np.uint64).reshape(self.depth, _EVENT_WORDS)
        self._iocbs_at = ctypes.c_void_p(int(self._ptrs.ctypes.data))
        self._events_at = ctypes.c_void_p(int(self._events.ctypes.data))
        self._wait = _Timespec(int(WAIT_SECONDS), int(WAIT_SECONDS % 1 * 1e9))
        self._batches: dict[int, list] = {}  # token -> [bytes got per read, reads outstanding, lengths, offsets]
        self._next_token = 1
        self._inflight = 0

    @property
    def closed(self) -> bool:
        return self._ctx.value == 0

    @property
    def free_slots(self) -> int:
        """Reads that can still be put in flight beside the submitted batches."""
        return self.depth - self._inflight

    def _submit(self, token: int, fd: int, bufs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                first: int, k: int) -> int:
        """Submit reads ``first:first + k`` of batch ``token``; returns how many the kernel took
        (0 when it asks to try again). The kernel copies each iocb at submission, so the slots
        are reused at once."""
        _fill_iocbs(self._iocb_words, fd, bufs, lengths, offsets, token, first, k)
        r = _LIBC.syscall(_NR["submit"], self._ctx, ctypes.c_long(k), self._iocbs_at)
        if r < 0:
            e = ctypes.get_errno()
            if e not in (errno.EAGAIN, errno.EINTR):
                raise OSError(e, f"io_submit: {os.strerror(e)}")
            return 0
        self._inflight += r
        return r

    def _reap(self, least: int) -> None:
        """Wait for at least ``least`` completions and file each with its batch."""
        while True:
            r = _LIBC.syscall(_NR["getevents"], self._ctx, ctypes.c_long(least), ctypes.c_long(self._inflight),
                              self._events_at, ctypes.byref(self._wait))
            if r >= 0:
                break
            e = ctypes.get_errno()
            if e != errno.EINTR:
                raise OSError(e, f"io_getevents: {os.strerror(e)}")
        if r == 0:
            raise OSError(errno.ETIMEDOUT, f"{self._inflight} reads not done after {WAIT_SECONDS:.0f} s")
        self._inflight -= r
        if len(self._batches) == 1:  # one batch in flight (a single query's read): all of them its own
            batch = next(iter(self._batches.values()))
            _file_events(self._event_words, r, batch[0])
            batch[1] -= r
            return
        ev = self._events[:r]
        owner = (ev["data"] >> np.uint64(32)).astype(np.int64)
        index = (ev["data"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        for t in np.unique(owner).tolist():
            mine = owner == t
            batch = self._batches[t]
            batch[0][index[mine]] = ev["res"][mine]
            batch[1] -= int(mine.sum())

    def _open_batch(self, n: int, offsets: np.ndarray, lengths: np.ndarray) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "AIO context is closed")
        token = self._next_token
        self._next_token += 1
        self._batches[token] = [np.zeros(n, dtype=np.int64), n, lengths, offsets]
        return token

    def submit(self, fd: int, bufs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> int:
        """Put the reads of :meth:`read` in flight (at most :attr:`free_slots` of them) and
        return a token for :meth:`wait` without waiting."""
        n = len(offsets)
        if n > self.free_slots:
            raise ValueError(f"{n} reads do not fit the {self.free_slots} free slots of the context")
        token = self._open_batch(n, offsets, lengths)
        sent = 0
        try:
            while sent < n:
                sent += self._submit(token, fd, bufs, offsets, lengths, sent, n - sent)
        except BaseException:
            self.close()
            raise
        return token

    def wait(self, token: int) -> np.ndarray:
        """Wait for the batch of ``token`` (completions of other batches are filed for theirs)
        and return the bytes each of its reads got, as :meth:`read` does."""
        if self.closed:
            raise OSError(errno.EBADF, "AIO context is closed")
        batch = self._batches[token]
        try:
            while batch[1] > 0:
                self._reap(1)
        except BaseException:
            self.close()
            raise
        got, _, lengths, offsets = self._batches.pop(token)
        _raise_failed(got, lengths, offsets)
        return got

    def read(self, fd: int, bufs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, *,
             limit: int | None = None) -> np.ndarray:
        """Read ``lengths[i]`` bytes at ``offsets[i]`` of ``fd`` into the memory at address
        ``bufs[i]`` (aligned as ``O_DIRECT`` needs), and return the bytes each read got
        (int64), with at most ``limit`` (default ``depth``) of them in flight, the next
        submitted as each finishes; submitted batches may be in flight meanwhile. A read the
        kernel fails raises ``OSError`` with its error number."""
        n = len(offsets)
        token = self._open_batch(n, offsets, lengths)
        batch = self._batches[token]
        depth = self.depth if limit is None else max(1, int(limit))
        sent = 0
        try:
            while batch[1] > 0:
                mine = sent - (n - batch[1])  # this call's reads in flight
                k = min(depth - mine, n - sent, self.free_slots)
                if k > 0:
                    took = self._submit(token, fd, bufs, offsets, lengths, sent, k)
                    sent += took
                    mine += took
                if mine == 0:  # every slot taken by submitted batches: wait for one of theirs
                    self._reap(1)
                    continue
                # all submitted: one wait for the lot; else wake at the first to refill its slot
                self._reap(mine if sent == n else 1)
        except BaseException:
            self.close()  # waits for what is in flight before the buffers are handed back
            raise
        got = self._batches.pop(token)[0]
        _raise_failed(got, lengths, offsets)
        return got

    def close(self) -> None:
        """Destroy the context (waiting for reads in flight); idempotent."""
        if not self.closed and _LIBC is not None:
            _LIBC.syscall(_NR["destroy"], self._ctx)
            self._ctx.value = 0

    def __del__(self) -> None:
        self.close()


def _raise_failed(got: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> None:
    """``OSError`` with the error number of the first read the kernel failed, if any."""
    bad = np.flatnonzero(got < 0)
    if len(bad):
        e = int(-got[bad[0]])
        raise OSError(e, f"read of {int(lengths[bad[0]])} bytes at {int(offsets[bad[0]])}: {os.strerror(e)}")
