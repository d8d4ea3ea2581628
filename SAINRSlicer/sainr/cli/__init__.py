"""``sainr`` command line: reduce, adapt, train, evaluate, bench, export, train-vae, synthesize.

The top of the package: one module per command (its options and its ``run``), turning parsed
options into the library's typed calls; nothing below imports this package, and no argparse
Namespace goes below it. User errors (bad input, options, paths, weights) exit with code 2 and
one line on stderr, no traceback and no output file. Internal errors exit with code 1 and point
to a report file with the traceback. ``--progress lines`` prints ``PROGRESS <done> <total>``
lines on stdout for programs that drive the CLI (the Slicer module); the default is a tqdm bar
on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Sequence
from importlib import import_module

import SimpleITK as sitk

from .. import __version__
from ..errors import SainrError, one_line
from ..protocol import EXIT_INTERNAL, EXIT_USER
from ..runtime.heap import retain_freed_memory

#: Subcommands in ``--help`` order: name -> (one-line help, module of :mod:`sainr.cli` with
#: its ``add_arguments``). Only the module of the command being run is imported, so a run
#: imports only what its command needs (``reduce`` never loads the benchmark's Unix-only
#: ``resource``, matplotlib or the trainer).
COMMANDS: dict[str, tuple[str, str]] = {
    "reduce": ("reduce the slice spacing of a volume (or a folder of them)", "reduce"),
    "train": ("train SA-INR (resumes from OUT/last.pt); torchrun-ready", "train"),
    "evaluate": ("compare SA-INR with interpolation on HR volumes", "evaluate"),
    "export": ("ship a training checkpoint under Resources/Models", "export"),
    "bench": ("speed and memory of SA-INR vs SimpleITK interpolation", "bench"),
    "adapt": ("fine-tune the model on one volume's own in-plane detail", "adapt"),
    "train-vae": ("stage I: train the in-plane slice VAE on thick-slice volumes", "train_vae"),
    "synthesize": ("stage I: thin-slice volumes by latent interpolation", "synthesize"),
}

#: Commands that run whole-volume inference (adapt's --reduce, evaluate's cases) or adapt the
#: model to a volume: their process keeps freed memory for reuse (:mod:`sainr.runtime.heap`),
#: set here at the process boundary, never inside the library.
RETAINED_HEAP_COMMANDS = frozenset({"reduce", "bench", "adapt", "evaluate"})


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``sainr`` parser. With ``argv``, only the subcommand it names gets its arguments
    (the others are listed by name and help), so parsing imports nothing another command
    needs; without, every subcommand is complete."""
    parser = argparse.ArgumentParser(
        prog="sainr", description="Reduce MRI slice spacing with SA-INR."
    )
    parser.add_argument("--version", action="version", version=f"sainr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if named is None or named == name:
            import_module(f"{__name__}.{module}").add_arguments(p)
    return parser


def _report_internal(exc: BaseException) -> int:
    """Write the traceback to a report file; one line on stderr points to it."""
    fd, path = tempfile.mkstemp(prefix="sainr-error-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    reason = one_line(f"{type(exc).__name__}: {exc}")[:200]
    print(f"sainr: internal error ({reason}); report: {path}", file=sys.stderr)
    return EXIT_INTERNAL


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM/SIGHUP handler: stop like Ctrl+C, so temp files are removed on the way out."""
    raise KeyboardInterrupt


#: Signals that stop a run like Ctrl+C (SIGHUP: the terminal closed; not on Windows).
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's arguments); the exit code."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in _STOP_SIGNALS}
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # keep stderr to our one-line messages
    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
        if args.command in RETAINED_HEAP_COMMANDS:
            retain_freed_memory()
        return args.func(args)
    except SainrError as exc:
        print(f"sainr: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt as exc:
        print(f"sainr: cancelled; {str(exc) or 'no partial output was written'}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are reported
        return _report_internal(exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
