"""The instance folder holds PHI (the SQLite store and its WAL, the sandbox's data) and the
generated secret key: owner-only from the start, and checked at every start-up.

The review found the store at mode 0644, readable by any local user (issue 11, finding 5).
Every command sets the umask to 077 before it creates anything, so files are born 0600 and
folders 0700; start-up then tightens whatever an older version or a copy left open, and
refuses to start when it cannot.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from smartapp.config import ConfigError, Settings

log = logging.getLogger(__name__)

#: Owner read/write only (files 0600, folders 0700).
PRIVATE_UMASK = 0o077


def private_umask() -> None:
    """New files 0600 and folders 0700 from here on, for the whole process."""
    os.umask(PRIVATE_UMASK)


def sqlite_path(database_url: str) -> Path | None:
    """The file of a `sqlite:///…` URL (None for memory or another backend)."""
    if not database_url.startswith("sqlite"):
        return None
    database = make_url(database_url).database
    return Path(database) if database and database != ":memory:" else None


def secure_instance(settings: Settings) -> list[Path]:
    """Make the instance folder (and the SQLite store, wherever it is) owner-only.

    Returns what had to be tightened (logged as a warning); raises ConfigError naming the
    path when a file is open to others and its mode cannot be changed.
    """
    targets: list[Path] = []
    root = settings.instance_path
    if root.exists():
        targets.append(root)
        targets += sorted(root.rglob("*"))
    store = sqlite_path(settings.database_url)
    if store is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = store.with_name(store.name + suffix)
            if candidate.exists() and candidate not in targets:
                targets.append(candidate)
    fixed: list[Path] = []
    for path in targets:
        try:
            info = path.lstat()
        except FileNotFoundError:  # a WAL file SQLite removed meanwhile
            continue
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
            continue
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        try:
            path.chmod(wanted)
        except OSError as exc:
            raise ConfigError(
                f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}) and "
                f"the app cannot change it ({type(exc).__name__}): it holds PHI or the secret "
                f"key; run `chmod {wanted:o} {path}` as its owner"
            ) from None
        fixed.append(path)
    if fixed:
        log.warning(
            "instance folder: %d path(s) were readable by other users and are now owner-only "
            "(first: %s)",
            len(fixed),
            fixed[0],
        )
    return fixed
