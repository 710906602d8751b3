"""The host's side of the directory a guest shares read-write (virtme-ng `--rwdir`).

The guest runs untrusted kernel code and can write that directory: every name in it may be
a symlink, a FIFO, a device node or a huge file by the time the host looks. So the host
creates its files exclusively under names the guest cannot guess, reads only regular files,
never through a link, up to a bound, all relative to a directory fd opened at boot; and once
the guest is gone it removes whatever the guest left there that is not a regular file or
directory. A file that breaks these rules is a FileReadError: the session stops the guest.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from harness.fileio import MissingFileError, open_dir, read_regular, sweep_special_files, write_new

STATUS_LIMIT = 64  # bytes of a status file: a number


class SharedDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = open_dir(path)
        self._stems: dict[int, str] = {}

    def stem(self, seq: int) -> str:
        """File names of command `seq`: numbered for readers, with a part the guest cannot
        guess before the host picks it, so nothing can be planted under them."""
        if seq not in self._stems:
            self._stems[seq] = f"cmd-{seq:04d}-{secrets.token_hex(4)}"
        return self._stems[seq]

    def create(self, name: str, data: bytes) -> None:
        """A new file the guest will read (never one that exists: it could be a planted link)."""
        write_new(name, data, dir_fd=self._fd)

    def read(self, name: str, limit: int) -> bytes:
        """A file the guest wrote: regular, not a link, at most `limit` bytes."""
        return read_regular(name, limit, follow=False, dir_fd=self._fd, what=name)

    def read_status(self, name: str) -> str:
        """A status file's text once the guest has written it, else ""."""
        try:
            return read_regular(name, STATUS_LIMIT, follow=False, dir_fd=self._fd).decode().strip()
        except MissingFileError:
            return ""
        except UnicodeDecodeError:
            return ""

    def close(self) -> list[tuple[Path, str]]:
        """After the guest is gone: remove every entry that is not a regular file or directory
        and return what went (path, kind)."""
        try:
            return sweep_special_files(self.path)
        finally:
            os.close(self._fd)
