#!/usr/bin/python3
"""A counterfeit card as a file: a FUSE filesystem holding one file, `card`, that claims
CLAIMED bytes but stores only the size of BACKING. Past it, `wrap` (the default) maps every
offset back onto the start (offset % real), as most fake SD cards and USB sticks do; `dead`
drops writes and reads zeros, as others do.

Usage: fakecard.py BACKING CLAIMED MOUNTPOINT [wrap|dead]   (runs until unmounted)

Direct I/O: the kernel keeps no page cache of `card`, so what a reader sees is what the
"flash" holds, wrap-around included.
"""

import errno
import os
import stat
import sys

from fusepy import FUSE, FuseOSError, Operations


class FakeCard(Operations):
    def __init__(self, backing, claimed, mode):
        self.fd = os.open(backing, os.O_RDWR)
        self.real = os.fstat(self.fd).st_size
        self.claimed = claimed
        self.dead = mode == "dead"

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/card":
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self.claimed}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "card"]

    def open(self, path, fi):
        if path != "/card":
            raise FuseOSError(errno.ENOENT)
        fi.direct_io = 1
        return 0

    def _pieces(self, offset, size):
        """(backing offset or None past the real size, length) pieces of
        [offset, offset+size), wrapped or dead."""
        end = min(offset + size, self.claimed)
        while offset < end:
            at = offset % self.real
            n = min(end - offset, self.real - at)
            yield (None if self.dead and offset >= self.real else at), n
            offset += n

    def read(self, path, size, offset, fi):
        return b"".join(
            bytes(n) if at is None else os.pread(self.fd, n, at)
            for at, n in self._pieces(offset, size)
        )

    def write(self, path, data, offset, fi):
        done = 0
        for at, n in self._pieces(offset, len(data)):
            if at is not None:
                os.pwrite(self.fd, data[done : done + n], at)
            done += n
        return done

    def truncate(self, path, length, fh=None):
        return 0

    def fsync(self, path, datasync, fi):
        os.fsync(self.fd)
        return 0

    def flush(self, path, fi):
        return 0


if __name__ == "__main__":
    backing, claimed, mountpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else "wrap"
    FUSE(FakeCard(backing, claimed, mode), mountpoint, foreground=True, raw_fi=True, nothreads=True)
