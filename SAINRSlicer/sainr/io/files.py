"""Output paths and atomic writes: the hidden temp files every writer stages in, the checks
that an output folder is usable, and :func:`write_atomically` for single files (checkpoints,
tables, pictures). Volumes are written by :mod:`sainr.io.outputs`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputPathError
from .read import volume_suffix

#: Hidden temp files and folders: ``.sainr-<pid>-<hex>``; the pid tells a killed run's
#: leftovers from a running one's.
_TEMP_NAME = re.compile(r"^\.sainr-(\d+)-[0-9a-f]+")
#: Leftovers of a process that no longer runs are removed once this old (seconds); any
#: leftover once STALE_ANY_S old (another machine's, or where processes cannot be checked).
STALE_DEAD_S = 3600
STALE_ANY_S = 86400


def is_temp_name(name: str) -> bool:
    """True for the hidden temp files and folders SAINRSlicer writes (never an input)."""
    return name.startswith(".sainr-")


def check_output_folder(folder: Path, src: Path | None = None) -> None:
    """``folder`` is (or can be created as) a writable folder, other than the input folder
    ``src``; nothing is created."""
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the output {folder} is a file, not a folder; choose a folder")
    if src is not None and folder.resolve() == src.resolve():
        raise OutputPathError(
            f"the output folder {folder} is the input folder: the results would replace the "
            "inputs; choose another folder"
        )
    existing = next(p for p in (folder.resolve(), *folder.resolve().parents) if p.exists())
    if not existing.is_dir():
        raise OutputPathError(f"cannot create the output folder {folder}: {existing} is a file")
    check_writable(existing)


def check_writable(folder: Path) -> None:
    """Create and remove a probe file: the only test that is right for every user (root
    ignores permission bits) and file system (read-only mounts, full quotas)."""
    try:
        probe = new_temp_file(folder / "probe", "")
    except OSError as exc:
        raise OutputPathError(
            f"output folder is not writable: {folder} ({exc.strerror}); choose another folder"
        ) from exc
    os.unlink(probe)


def _temp_path(folder: Path, suffix: str) -> Path:
    return folder / f".sainr-{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def new_temp_file(target: Path, suffix: str | None = None) -> str:
    """An empty, uniquely named hidden file beside ``target`` (same suffix unless given),
    created with the permissions a new file normally gets (0o666 minus the umask; mkstemp
    would give 0o600)."""
    suffix = suffix if suffix is not None else volume_suffix(target) or target.suffix
    for _ in range(100):
        tmp = _temp_path(target.resolve().parent, suffix)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"no free temporary name in {target.parent}")


def new_temp_folder(folder: Path) -> Path:
    """A new hidden staging folder in ``folder`` (same file system: renames are atomic)."""
    for _ in range(100):
        stage = _temp_path(folder, "")
        try:
            stage.mkdir()
        except FileExistsError:
            continue
        return stage
    raise FileExistsError(f"no free temporary name in {folder}")


def remove_stale_temps(folder: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left in ``folder``: temp files and
    folders of a process that no longer runs here, once STALE_DEAD_S old, and any once
    STALE_ANY_S old (another machine's, or where processes cannot be checked)."""
    now = time.time()
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if match and (age > STALE_ANY_S or (age > STALE_DEAD_S and not _running(int(match[1])))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True where that cannot be checked:
    Windows' os.kill would terminate it)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_atomically(path: Path, write: Callable[[str], None], suffix: str | None = None) -> None:
    """``write(temp)`` to a hidden temp file beside ``path``, then rename it over ``path``:
    never a partial file, and no temp file left on failure."""
    tmp = new_temp_file(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (hex), read in 1 MB blocks: checkpoints are checked
    against the model catalog and results against their record with it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
