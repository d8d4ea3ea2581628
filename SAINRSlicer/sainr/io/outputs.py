"""One writer for every result: destinations resolved and checked first, files verified before
they replace anything, and a record of how each result was made.

A write goes in three phases. **Before any work** the destination is resolved: a symbolic link
is followed to the file it names (the result is written there and the link keeps naming it),
the name is checked (a known format, matched case-insensitively; no name a header cannot hold),
and no file the write would create, replace or remove may be a file of an input (same path or
same file: symbolic and hard links included). **Staging** writes every file of the result under
a hidden folder in the destination folder (the destination's file system, so the moves below
are renames), reads it back and compares it voxel for voxel with the image, writes the record
``<name>.sainr.json`` and flushes every file to the disk (where a file system that allocates
late reports a full disk); a failure here leaves the old result as it was. **Landing** moves the files into place with Ctrl+C and SIGTERM held back, in an order
that keeps one whole result at every instant: a header + data format (.mhd, .nhdr) gets its new
data file under a name no file has, then its header is replaced atomically (the switch from
the old result to the new one), then the record, and only then is the old data file removed.

The record (options, model hash, input fingerprint, the hash and size of every file, the grid)
is what :func:`is_complete` judges an existing result by: batch runs and cohorts keep a result
only when it is the one the same request would make now, byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import OutputPathError
from .files import check_writable, is_temp_name, new_temp_folder, remove_stale_temps, sha256
from .read import DATA_FILES, VOLUME_SUFFIXES, data_file_of, input_files, volume_suffix

#: The record beside a result: ``out.nii.gz`` -> ``out.nii.gz.sainr.json``.
RECORD_SUFFIX = ".sainr.json"
RECORD_FORMAT = "sainr-output-v1"
#: A data file this writer names when the plain one is taken: ``<stem>.<12 hex><ext>``.
_UNIQUE_DATA = r"\.[0-9a-f]{12}"
#: Characters no output name may hold: control characters break headers and one-line messages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Signals held back while a result lands (SIGHUP: not on Windows).
_LANDING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class LandedInterrupt(KeyboardInterrupt):
    """Ctrl+C or SIGTERM arrived while a result landed: it was held back until the result was
    whole in place, so the result at ``path`` is written (and a caller must say so)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the result was written ({path}) before the run stopped")
        self.path = path


# --- destinations ---------------------------------------------------------------------------


def check_output_name(path: Path) -> str:
    """The format suffix of ``path`` (lower case); refuses a name of unknown format, without a
    name before the extension, with control characters, of SAINRSlicer's own temp files, or
    (.mhd/.nhdr) with white space or '%' (the header names its data file: a space starts a
    file list, '%' a numbered pattern)."""
    name = path.name
    suffix = volume_suffix(name)
    if suffix is None:
        raise OutputPathError(
            f"unknown output format for {name}; use one of {', '.join(VOLUME_SUFFIXES)} "
            "(in any letter case)"
        )
    stem = name[: -len(suffix)]
    if not stem or stem.endswith("."):
        raise OutputPathError(
            f"the output name {name!r} has no name before its extension; give e.g. out{suffix}"
        )
    if _CONTROL.search(name):
        raise OutputPathError(
            f"the output name {name!r} holds control characters (e.g. a line break); rename it"
        )
    if is_temp_name(name):
        raise OutputPathError(
            f"the output name {name} is reserved for SAINRSlicer's temp files (.sainr-*), which "
            "later runs remove; choose another name"
        )
    if suffix in DATA_FILES and re.search(r"[\s%]", stem):
        raise OutputPathError(
            f"the output name {name!r} holds a space or '%', which a {suffix} header cannot "
            f"name its data file with; rename it, or write a single file (e.g. "
            f"{stem.strip()}.nii.gz)"
        )
    return suffix


def real_path(path: Path) -> Path:
    """Where writing ``path`` puts the result: the absolute path with every symbolic link
    followed (a link to a file not yet there: that file); refuses a link loop."""
    real = Path(os.path.realpath(path))
    if real.is_symlink():
        raise OutputPathError(f"the output {path} is a loop of symbolic links; remove the link")
    return real


def destination(path: str | os.PathLike, inputs: Sequence[Path] = ()) -> Path:
    """Check, before any work, that a result can be written at ``path`` without touching any
    file of ``inputs``; returns where it goes (:func:`real_path`). Nothing is created."""
    path = Path(path)
    suffix = check_output_name(path)
    if path.is_dir():
        raise OutputPathError(
            f"the output {path} is a folder; give a file name (e.g. {path / ('out' + suffix)})"
        )
    real = real_path(path)
    if volume_suffix(real.name) != suffix:
        raise OutputPathError(
            f"the output {path} is a link to {real}, a name of another format; write to "
            f"{real} itself or give another output name"
        )
    folder = real.parent
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the output folder {folder} is a file; choose another folder")
    if not folder.is_dir():
        raise OutputPathError(f"output folder does not exist: {folder}; create it first")
    check_writable(folder)
    _check_not_inputs(path, real, inputs)
    return real


def _check_not_inputs(path: Path, real: Path, inputs: Sequence[Path]) -> None:
    """Refuse when the result, a data file named as ITK names it, or the old data file its
    header names (removed after the replace) is a file of an input: the same file by any
    name (os.path.samefile: symbolic and hard links too)."""
    old = _old_data_file(real)
    touched = [*planned_files(real), *([old] if old is not None else [])]
    for src in inputs:
        for src_file in input_files(src) if src.exists() else []:
            for out in touched:
                if out.exists() and src_file.exists() and os.path.samefile(out, src_file):
                    what = "is the input file" if out == real else f"would replace {src_file}"
                    raise OutputPathError(f"output {path} {what}; choose another name")


def planned_files(real: Path) -> list[Path]:
    """The names a result at ``real`` may take: itself, the data files ITK names after a
    .mhd/.nhdr header (``out.zraw``, ``out.raw``) and its record."""
    return [real, *_plain_data_files(real), record_path(real)]


def _plain_data_files(real: Path) -> list[Path]:
    """The data files ITK names after a .mhd/.nhdr header (``out.zraw``, ``out.raw``)."""
    suffix = volume_suffix(real.name)
    stem = real.name[: -len(suffix)] if suffix else real.name
    return [real.with_name(stem + ext) for ext in DATA_FILES.get(suffix, ())]


def _old_data_file(real: Path) -> Path | None:
    """The data file the existing header at ``real`` names, when this writer made it (a name
    ITK or this writer gives, in the same folder): the one a rewrite removes."""
    suffix = volume_suffix(real.name)
    if suffix not in DATA_FILES or not real.is_file():
        return None
    old = data_file_of(real)
    if old is None or old.parent != real.parent:
        return None
    stem = re.escape(real.name[: -len(suffix)])
    exts = "|".join(re.escape(e) for e in DATA_FILES[suffix])
    return old if re.fullmatch(f"{stem}({_UNIQUE_DATA})?({exts})", old.name) else None


def record_path(real: Path) -> Path:
    """The record beside the result at ``real``."""
    return real.with_name(real.name + RECORD_SUFFIX)


# --- staging ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """One result written and verified in a staging folder: its files (header or single file
    first) and the names they land under, and its record (None: no record)."""

    real: Path
    files: list[tuple[Path, Path]]
    record: Path | None


def _data_name(real: Path, ext: str, taken: set[str]) -> str:
    """A data file name no entry in the destination folder has: the plain one (``out.zraw``)
    when free, else a new unique one (``out.1a2b3c4d5e6f.zraw``): the old result's data file
    is never written over, so the old header stays whole until it is replaced."""
    stem = real.name[: -len(volume_suffix(real.name) or "")]
    name = stem + ext
    while name in taken or os.path.lexists(real.parent / name):
        name = f"{stem}.{secrets.token_hex(6)}{ext}"
    return name


def _stage(
    image: sitk.Image, real: Path, stage: Path, compress: bool, taken: set[str]
) -> list[tuple[Path, Path]]:
    """Write ``image`` into ``stage`` under a canonical lower-case name (ITK picks its writer by
    a case-sensitive extension) and return (staged file, final path) pairs, header first. A
    data file name is added to ``taken`` (the names earlier results of this write land as)."""
    suffix = volume_suffix(real.name)
    if suffix not in DATA_FILES:
        staged = stage / f"result{suffix}"
        _write_image(image, staged, compress)
        return [(staged, real)]
    ext = DATA_FILES[suffix][0 if compress else 1]
    data = _data_name(real, ext, taken)
    taken.add(data)
    header = stage / (data[: -len(ext)] + suffix)
    _write_image(image, header, compress)
    if data_file_of(header) != stage / data:
        raise OSError(errno.EIO, f"the header written does not name its data file {data}")
    return [(header, real), (stage / data, real.parent / data)]


def _write_image(image: sitk.Image, path: Path, compress: bool) -> None:
    """The one place a volume file is written (tests make it fail as a full disk would)."""
    sitk.WriteImage(image, str(path), compress)


def _verify(image: sitk.Image, files: list[tuple[Path, Path]]) -> None:
    """Read the staged result back: every file non-empty, the same grid, pixel type and
    voxels as ``image``; raises OSError (as the OS would for a short write) otherwise."""
    for staged, _ in files:
        if staged.stat().st_size == 0:
            raise OSError(errno.EIO, f"{staged.name} is empty after writing")
    try:
        back = sitk.ReadImage(str(files[0][0]))
    except RuntimeError as exc:
        raise OSError(errno.EIO, "the file written cannot be read back (a short write)") from exc
    same = (
        back.GetSize() == image.GetSize()
        and back.GetPixelID() == image.GetPixelID()
        and np.allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-5, atol=0)
        and np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
        and np.allclose(back.GetOrigin(), image.GetOrigin(), rtol=1e-6, atol=1e-4)
        and _same_voxels(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    )
    if not same:
        raise OSError(errno.EIO, "the file read back differs from the result (a short write)")


def _sync(path: Path) -> None:
    """Flush a staged file to the disk before it replaces anything: a file system that
    allocates late (ext4, XFS, network shares) reports a full disk only here, after the
    writes and the read-back (from memory) succeeded."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _same_voxels(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays (NaN equal to NaN in float ones: a NaN voxel is written as NaN)."""
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f" and b.dtype.kind == "f")


def _file_entry(staged: Path, final: Path) -> dict[str, Any]:
    return {"name": final.name, "bytes": staged.stat().st_size, "sha256": sha256(staged)}


def _grid(image: sitk.Image) -> dict[str, Any]:
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "pixel": image.GetPixelIDTypeAsString(),
    }


def _write_record(
    stage: Path, image: sitk.Image, files: list[tuple[Path, Path]], made: dict, run: str
) -> Path:
    """The record of a staged result, written into the staging folder."""
    record = {
        "format": RECORD_FORMAT,
        "sainr": __version__,
        "made": _jsonable(made),
        "run": run,
        "files": [_file_entry(staged, final) for staged, final in files],
        "grid": _grid(image),
    }
    path = stage / f"record{RECORD_SUFFIX}"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record, indent=1) + "\n")
    return path


# --- landing ----------------------------------------------------------------------------------


def _move_new(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, which must not exist: never renamed over another file (a hard
    link fails when ``dst`` exists; where links are unsupported, checked just before)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "the data file name is taken", str(dst)) from None
        os.replace(src, dst)
        return
    os.unlink(src)


def _replace(src: Path, dst: Path) -> None:
    """Atomically put ``src`` in the place of ``dst`` (the old file, if any, goes at once)."""
    os.replace(src, dst)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _land(staged: Staged) -> None:
    """Move one verified result into place: new data file (a name no file has), then the
    header or single file (atomic: old result or new), then the record, then the old data
    file goes. On a failure before the header is replaced, the new data file is taken back."""
    old_data = _old_data_file(staged.real)
    (header, real), *data = staged.files
    placed: list[Path] = []
    try:
        for src, dst in data:
            _move_new(src, dst)
            placed.append(dst)
        _replace(header, real)
    except BaseException:
        for dst in placed:
            dst.unlink(missing_ok=True)
        raise
    record = record_path(real)
    if staged.record is not None:
        _replace(staged.record, record)
    elif record.is_file():
        _remove(record)  # a record of the old result would describe another file
    if old_data is not None and old_data not in {dst for _, dst in data}:
        _remove(old_data)


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Hold Ctrl+C, SIGTERM and SIGHUP back while a result lands (main thread only: elsewhere
    signals are not delivered to Python code anyway); yields the signals that arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    arrived: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda n, _f: arrived.append(n)) for sig in _LANDING_SIGNALS
    }
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deliver(signum: int, path: Path) -> None:
    """Act on a signal held back while ``path`` landed, as its handler would have: a handler
    that raises KeyboardInterrupt raises :class:`LandedInterrupt`; the default action is
    taken by sending the signal again; an ignored signal stays ignored."""
    handler = signal.getsignal(signum)
    if callable(handler):
        try:
            handler(signum, None)
        except KeyboardInterrupt as exc:
            raise LandedInterrupt(path) from exc
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise LandedInterrupt(path)
        os.kill(os.getpid(), signum)


# --- the writer -------------------------------------------------------------------------------


def write_volumes(
    items: Sequence[tuple[sitk.Image, str | os.PathLike]],
    compress: bool = True,
    inputs: Sequence[Path] = (),
    made: dict[str, Any] | None = None,
) -> list[Path]:
    """Write every image at its path (the image and its mask: together) and return where they
    went (links followed). With ``made`` (how the result was made: JSON values), each gets a
    record for :func:`is_complete`; all share one run id, so a result whose mask is from
    another run is not complete. On any failure while staging (disk full, unreadable read-back,
    interrupt) every old result is unchanged and no temp file is left; see the module."""
    reals = [destination(path, inputs) for _, path in items]
    if len(set(reals)) < len(reals):
        raise OutputPathError(
            f"the outputs {', '.join(str(p) for _, p in items)} would write the same file "
            "twice; give them different names"
        )
    stages, landed = [], []
    run, taken = secrets.token_hex(8), set()
    try:
        for folder in {real.parent for real in reals}:
            remove_stale_temps(folder)
        staged = []
        for image, real in zip((image for image, _ in items), reals):
            stages.append(stage := new_temp_folder(real.parent))
            files = _stage(image, real, stage, compress, taken)
            _verify(image, files)
            record = _write_record(stage, image, files, made, run) if made is not None else None
            for path in [*(f for f, _ in files), *([record] if record else [])]:
                _sync(path)
            staged.append(Staged(real, files, record))
        with _signals_held() as arrived:
            for one in staged:
                _land(one)
                landed.append(one.real)
        for signum in arrived:
            _deliver(signum, reals[0])
    except (RuntimeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        failed = [str(real) for real in reals if real not in landed]
        written = f"{', '.join(map(str, landed))} was written; " if landed else ""
        raise OutputPathError(
            f"could not write {', '.join(failed)} ({_reason(reason)}); {written}any earlier "
            "result there is unchanged; check the free disk space and the folder"
        ) from exc
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
    return reals


def _reason(exc: object) -> str:
    """The informative last line of an ITK or OS error, without ITK's class prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    reason = lines[-1].split("ERROR:", 1)[-1]
    return re.sub(r"^\s*\w+\(0x[0-9a-f]+\):", "", reason).strip()[:160]


def write_volume(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write one volume (see :func:`write_volumes`); returns where it went."""
    return write_volumes([(image, path)], compress)[0]


# --- completeness -----------------------------------------------------------------------------


def input_fingerprint(src: Path) -> str:
    """What identifies an input without reading it: name, size and modification time of each
    of its files (a volume and its data file, or a DICOM folder's files), hashed."""
    files = (
        sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        if src.is_dir()
        else input_files(src)
    )
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def is_complete(paths: Sequence[Path], made: dict[str, Any]) -> bool:
    """True when every result of ``paths`` (a result and its mask) is the one ``made`` makes:
    its record says so, names the same run for all of them, and every file it lists is there
    with the recorded size and SHA-256 (a truncated, replaced or half-replaced result is not
    complete). Anything else (no record, another request, input or model) is redone."""
    runs, made = set(), _jsonable(made)
    for path in paths:
        real = Path(os.path.realpath(path))
        record = _read_record(record_path(real))
        if record is None or record.get("made") != made or not record.get("files"):
            return False
        if record["files"][0].get("name") != real.name:
            return False
        for entry in record["files"]:
            file = real.parent / str(entry.get("name"))
            if not file.is_file() or file.stat().st_size != entry.get("bytes"):
                return False
            if sha256(file) != entry.get("sha256"):
                return False
        runs.add(record.get("run"))
    return len(runs) <= 1


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing, unreadable or of another format."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    return record if isinstance(record.get("files"), list) else None


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing requests."""
    return json.loads(json.dumps(value))
