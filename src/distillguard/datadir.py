"""The data folder is private: the folder 0700, every file in it 0600.

It holds prompts (``events.db``), key hashes (``control.db``) and the watermark master
secret, so other local users must not read any of it. ``mkdir(mode=0o700)`` is not
enough: it does nothing to a folder that already exists (often 0755 from an earlier
``mkdir -p`` or a container image), and SQLite creates its files with the umask's mode.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("distillguard.datadir")

_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed and make it and its files owner-only.

    A folder or file found readable by others is tightened with a warning that names it
    and its old mode, so an operator learns that it was exposed.
    """
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(folder, 0o700)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                _tighten(Path(entry.path), 0o600)
    return folder


def private_file(path: str | Path) -> Path:
    """Create ``path`` empty with mode 0600 if it is missing, so that a library that opens
    it afterwards (SQLite, which also gives its -wal and -shm files the database file's
    mode) never creates it with the umask's mode; an existing file is tightened."""
    file = Path(path)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _tighten(file, 0o600)
    else:
        os.close(fd)
    return file


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & _OPEN_TO_OTHERS:
        log.warning("%s had mode %04o, open to other users; setting %04o", path, current, mode)
        os.chmod(path, mode)
