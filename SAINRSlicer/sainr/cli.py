"""``sainr`` command line: reduce, adapt, train, evaluate, bench, export, train-vae, synthesize.

User errors (bad input, options, paths, weights) exit with code 2 and one line on stderr, no
traceback and no output file. Internal errors exit with code 1 and point to a report file with
the traceback. ``--progress lines`` prints ``PROGRESS <done> <total>`` lines on stdout for
programs that drive the CLI (the Slicer module); the default is a tqdm bar on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .errors import OutputPathError, SainrError
from .geometry import relative_thickness
from .io import (
    check_not_inputs,
    check_output_folder,
    check_output_path,
    check_writable,
    dicom_slice_thickness,
    is_dicom_folder,
    output_files,
    read_volume,
    volume_suffix,
    write_atomically,
    write_volumes,
)
from .protocol import PROGRESS_TAG

EXIT_USER = 2
EXIT_INTERNAL = 1


def _progress_printer(
    mode: str, label: str, unit: str = "vox", tag: str = PROGRESS_TAG
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(callback, close) reporting progress as a tqdm bar counting ``unit`` or as
    ``<tag> done total`` lines (``PROGRESS`` for the reconstruction; adaptation inside a
    reduce run uses its own tag so that drivers tell the phases apart)."""
    if mode == "lines":

        def emit(done: int, total: int) -> None:
            print(f"{tag} {done} {total}", flush=True)

        return emit, lambda: None
    if mode == "none":
        return (lambda done, total: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=1, desc=label, unit=unit, unit_scale=True, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # redraws at most every mininterval

    return update, bar.close


def _spacing_args(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--spacing", type=float, metavar="MM", help="target slice spacing in mm")
    target.add_argument("--factor", type=float, help="reduce the slice spacing by this factor")
    target.add_argument(
        "--isotropic", action="store_true", help="target = the finest in-plane spacing"
    )


def _add_reduce(p: argparse.ArgumentParser) -> None:
    from .adapt import add_reduce_arguments

    p.add_argument("input", type=Path, help="volume file (.nii.gz/.nrrd/.mha), DICOM folder, or folder of volumes")
    p.add_argument("output", type=Path, help="output file, or folder in batch mode")
    _spacing_args(p)
    p.add_argument("--mask", type=Path, help="also write the gating mask (uint8) here")
    p.add_argument("--series", metavar="UID", help="DICOM folder with several series: the SeriesInstanceUID to read")
    p.add_argument("--device", default="auto", help="auto (CUDA if usable, else CPU), cpu, cuda, mps")
    p.add_argument("--weights", default=None, help="shipped model name or checkpoint file (default: default)")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), help="slice axis (i, j, k); detected if omitted")
    p.add_argument("--memory-mb", type=float, default=2048, help="working memory budget (default 2048)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = fp16 autocast on CUDA, bf16 on CPUs with AMX, else fp32")  # fmt: skip
    p.add_argument("--nan-to-zero", action="store_true", help="replace NaN/Inf voxels by 0 instead of refusing")
    p.add_argument("--force", action="store_true", help="allow reductions beyond 20x")
    p.add_argument("--preview", type=Path, help="also write a PNG comparison picture (single input)")
    p.add_argument("--progress", choices=("bar", "lines", "none"), default="bar")
    add_reduce_arguments(p)
    p.set_defaults(func=_run_reduce)


def _batch_pairs(args) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, mask) triples with every output path checked; a folder that is not a
    DICOM series means batch mode: its volume files and DICOM series subfolders (a series is
    written as ``<folder name>.nii.gz``). Nothing is created here."""
    src: Path = args.input
    if args.mask is not None and args.mask.resolve() == args.output.resolve():
        raise OutputPathError(f"--mask {args.mask} is the output path; give it another name")
    if not src.is_dir() or is_dicom_folder(src):
        check_output_path(args.output, (src,))
        if args.mask is not None:
            check_output_path(args.mask, (src,))
        return [(src, args.output, args.mask)]
    for folder in (args.output, args.mask):
        if folder is not None:
            check_output_folder(folder, src)
    pairs = [
        (f, args.output / _batch_name(f), args.mask / _batch_name(f) if args.mask else None)
        for f in _batch_inputs(src)
    ]
    _check_batch_outputs(pairs)
    return pairs


def _batch_inputs(src: Path) -> list[Path]:
    """Volume files and DICOM series folders in ``src``, by name. Hidden files are never
    inputs: temp files a killed run left (``.sainr-*``), macOS ``._*`` metadata."""
    entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    inputs = [p for p in entries if (p.is_file() and volume_suffix(p)) or is_dicom_folder(p)]
    if not inputs:
        raise SainrError(
            f"no volume files (.nii.gz, .nrrd, .mha, ...) or DICOM series folders in {src}"
        )
    return inputs


def _skipped_folders(src: Path) -> list[str]:
    """Batch mode: the subfolders of ``src`` that are neither read nor searched (no DICOM)."""
    return sorted(
        p.name for p in src.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not is_dicom_folder(p)
    )  # fmt: skip


def _batch_name(src: Path) -> str:
    return src.name + ".nii.gz" if src.is_dir() else src.name


def _check_batch_outputs(pairs: list[tuple[Path, Path, Path | None]]) -> None:
    """Batch mode, before anything is read: no output is a folder or a file of an input, and
    no two outputs (images, masks, .mhd data files) are the same file."""
    inputs = [src for src, _, _ in pairs]
    owner: dict[Path, str] = {}
    for src, image, mask in pairs:
        for out, kind in ((image, "result"), (mask, "mask")):
            if out is None:
                continue
            if out.is_dir():
                raise OutputPathError(
                    f"the output {out} is a folder; move it away or choose another output folder"
                )
            check_not_inputs(out, output_files(out), inputs)
            for f in output_files(out):
                if f.resolve() in owner:
                    raise OutputPathError(
                        f"the {owner[f.resolve()]} and the {kind} of {src.name} would both be "
                        f"written to {f}; give --mask its own folder, or rename an input"
                    )
                owner[f.resolve()] = f"{kind} of {src.name}"


def _check_options(args) -> None:
    """Every option of ``sainr reduce`` that needs no input read: numbers in range, the
    picture and weights outputs usable (the weights never into the shipped models)."""
    from .adapt import check_weights_output

    if not (math.isfinite(args.memory_mb) and args.memory_mb > 0):
        raise SainrError(f"--memory-mb must be a positive number of MB, got {args.memory_mb}")
    if args.series is not None and not is_dicom_folder(args.input):
        raise SainrError("--series picks a series of a DICOM folder; the input is not one")
    if args.preview is not None:
        _check_picture_path(args.preview, args.input)
    if args.save_adapted is not None:
        check_weights_output(args.save_adapted, args.weights)


def _check_picture_path(path: Path, src: Path) -> None:
    """--preview: a .png file (so never an input or a volume output) in a writable folder, for
    a single input."""
    if src.is_dir() and not is_dicom_folder(src):
        raise SainrError("--preview needs a single input volume, not a folder")
    if path.suffix.lower() != ".png":
        raise OutputPathError(f"--preview writes a PNG picture; give a .png file name, not {path.name}")
    if path.is_dir():
        raise OutputPathError(f"--preview {path} is a folder; give a .png file name")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"--preview folder does not exist: {folder}; create it first")
    check_writable(folder)


def _checked_input(src: Path, args, target: dict) -> sitk.Image:
    """Read ``src`` and run every check that needs no model (grid, target, voxel values)."""
    from .api import plan_reduction
    from .validation import check_values

    with _native_stderr_silenced():
        image = read_volume(src, getattr(args, "series", None))
    axis, _ = plan_reduction(image, args.spacing, **target)
    relative_thickness(slice_thickness_mm(args, src), image.GetSpacing()[axis])
    check_values(sitk.GetArrayViewFromImage(image), "zero" if args.nan_to_zero else "refuse")
    return image


def slice_thickness_mm(args, src: Path) -> float | None:
    """The acquired slice thickness: ``--slice-thickness``, else the DICOM SliceThickness of
    a series folder ``src``; None = the slice spacing (contiguous slices)."""
    if args.slice_thickness is not None:
        return args.slice_thickness
    return dicom_slice_thickness(src, getattr(args, "series", None))


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what C++ code (MetaIO, VNL) prints on stderr meanwhile: the CLI's stderr holds
    only its own lines; the failure itself still arrives as an exception."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _run_reduce(args) -> int:
    from .adapt import adapt_for_reduce
    from .inference import choose_device
    from .weights import load_model

    pairs = _batch_pairs(args)
    _check_options(args)
    choose_device(args.device)  # an unavailable device fails before any work
    target = {"factor": args.factor, "isotropic": args.isotropic, "axis": args.axis, "force": args.force}
    first = _checked_input(pairs[0][0], args, target)  # a bad input fails before the model loads
    for src, _, _ in pairs[1:]:  # batch: refuse any bad volume before the first result is written
        _checked_input(src, args, target)
    if len(pairs) > 1 and (skipped := _skipped_folders(args.input)):
        print(f"note: skipped subfolders without a DICOM series: {', '.join(skipped)}", file=sys.stderr)
    model = load_model(args.weights)
    written: list[Path] = []
    try:
        for n, (src, dst, mask_dst) in enumerate(pairs):
            image = first if n == 0 else _checked_input(src, args, target)
            net = adapt_for_reduce(src, image, model, args, target)
            _reduce_one(src, image, dst, mask_dst, net, args, target, written)
    except KeyboardInterrupt as exc:
        if written:
            raise KeyboardInterrupt(
                f"{len(written)} of {len(pairs)} results were written (the last: {written[-1]}); "
                "the one in progress was not"
            ) from exc
        raise
    return 0


def _reduce_one(
    src: Path, image: sitk.Image, dst: Path, mask_dst: Path | None, net, args, target: dict,
    written: list[Path],
) -> None:  # fmt: skip
    """Reconstruct one checked input, write its result (and mask, and --preview; ``dst`` is
    added to ``written`` as soon as it exists) and say so."""
    from .api import reduce_spacing

    update, close = _progress_printer(args.progress, src.name)
    try:
        result = reduce_spacing(
            image, args.spacing, **target, device=args.device, model=net,
            budget_mb=args.memory_mb, precision=args.precision, nan_policy="zero" if args.nan_to_zero else "refuse",
            slice_thickness_mm=slice_thickness_mm(args, src),
            progress=update, notice=lambda msg: print(f"note: {msg}", file=sys.stderr),
        )  # fmt: skip
    finally:
        close()
    for path in (dst, mask_dst):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    outputs = [(result.image, dst)] + ([(result.mask, mask_dst)] if mask_dst else [])
    write_volumes(outputs)  # image and mask together, or neither
    written.append(dst)
    if args.preview is not None:
        from .preview import save_comparison

        write_atomically(args.preview, lambda tmp: save_comparison(
            image, result.image, result.mask, result.info["axis"], tmp), ".png")  # fmt: skip
    info = result.info
    print(
        f"{src.name}: axis {info['axis_label']}, {info['slices_in']} slices at "
        f"{info['spacing_in']:.4g} mm ({info['slice_thickness']:.4g} mm thick) -> "
        f"{info['slices_out']} at {info['spacing_out']:.4g} mm, "
        f"gated {100 * info['gated_fraction']:.0f} % ({info['device']}) -> {dst}",
        file=sys.stderr,
    )


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config (see configs/default.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history)")
    p.add_argument("--data-root", type=Path, default=Path("."), help="folder the config's paths are relative to")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .training import TrainConfig, train

    try:
        cfg = TrainConfig.load(args.config, args.set)
    except (ValueError, TypeError, OSError) as exc:
        raise SainrError(f"bad training config: {exc}") from exc
    train(cfg, args.out, args.data_root, args.max_minutes)
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="training checkpoint (e.g. RUN/best.pt)")
    p.add_argument("--name", default="default", help="model name in the catalog")
    p.add_argument("--description", default="", help="one line for the catalog")
    p.add_argument("--models-dir", type=Path, help="catalog folder (default: Resources/Models)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from .weights import export_model

    entry = export_model(args.checkpoint, args.name, args.description, args.models_dir)
    print(f"{args.name}: {entry['file']} sha256 {entry['sha256']} ({entry['bytes']} bytes)")
    return 0


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    from . import evaluate

    evaluate.add_arguments(p)
    p.set_defaults(func=evaluate.run)


def _add_bench(p: argparse.ArgumentParser) -> None:
    from . import bench

    bench.add_arguments(p)
    p.set_defaults(func=bench.run)


def _add_adapt(p: argparse.ArgumentParser) -> None:
    from . import adapt

    adapt.add_arguments(p)
    p.set_defaults(func=adapt.run)


def _add_train_vae(p: argparse.ArgumentParser) -> None:
    from . import synthesis

    synthesis.add_arguments_train(p)
    p.set_defaults(func=synthesis.run_train)


def _add_synthesize(p: argparse.ArgumentParser) -> None:
    from . import synthesis

    synthesis.add_arguments_synthesize(p)
    p.set_defaults(func=synthesis.run_synthesize)


#: Subcommands in ``--help`` order: name -> (one-line help, function that adds its arguments).
#: The functions import their command's modules, so a run imports only what its command needs
#: (``reduce`` never loads the benchmark's Unix-only ``resource``, matplotlib or the trainer).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "reduce": ("reduce the slice spacing of a volume (or a folder of them)", _add_reduce),
    "train": ("train SA-INR (resumes from OUT/last.pt); torchrun-ready", _add_train),
    "evaluate": ("compare SA-INR with interpolation on HR volumes", _add_evaluate),
    "export": ("ship a training checkpoint under Resources/Models", _add_export),
    "bench": ("speed and memory of SA-INR vs SimpleITK interpolation", _add_bench),
    "adapt": ("fine-tune the model on one volume's own in-plane detail", _add_adapt),
    "train-vae": ("stage I: train the in-plane slice VAE on thick-slice volumes", _add_train_vae),
    "synthesize": ("stage I: thin-slice volumes by latent interpolation", _add_synthesize),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``sainr`` parser. With ``argv``, only the subcommand it names gets its arguments
    (the others are listed by name and help), so parsing imports nothing another command
    needs; without, every subcommand is complete."""
    parser = argparse.ArgumentParser(prog="sainr", description="Reduce MRI slice spacing with SA-INR.")
    parser.add_argument("--version", action="version", version=f"sainr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (text, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if named is None or named == name:
            add_arguments(p)
    return parser


def _one_line(text: str) -> str:
    """``text`` on one line (messages from torch or ITK may span several)."""
    return " ".join(text.split())


def _report_internal(exc: BaseException) -> int:
    """Write the traceback to a report file; one line on stderr points to it."""
    fd, path = tempfile.mkstemp(prefix="sainr-error-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    reason = _one_line(f"{type(exc).__name__}: {exc}")[:200]
    print(f"sainr: internal error ({reason}); report: {path}", file=sys.stderr)
    return EXIT_INTERNAL


def _interrupt(signum, frame) -> None:
    """SIGTERM/SIGHUP handler: stop like Ctrl+C, so temp files are removed on the way out."""
    raise KeyboardInterrupt


#: Signals that stop a run like Ctrl+C (SIGHUP: the terminal closed; not on Windows).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def main(argv: Sequence[str] | None = None) -> int:
    previous = {sig: signal.signal(sig, _interrupt) for sig in _STOP_SIGNALS}
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # keep stderr to our one-line messages
    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
        return args.func(args)
    except SainrError as exc:
        print(f"sainr: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt as exc:
        print(f"sainr: cancelled; {str(exc) or 'no partial output was written'}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are reported
        return _report_internal(exc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
