"""``sainr reduce INPUT OUTPUT --spacing MM|--factor F|--isotropic``: one volume, a DICOM
series, or a folder of them (batch mode), with every input and output checked before the
first result is written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import cohort
from ..api import reduce_spacing
from ..errors import InputImageError, OutputPathError, SainrError
from ..io.files import check_output_folder, check_writable, write_atomically
from ..io.outputs import (
    LandedInterrupt,
    check_output_name,
    destination,
    input_fingerprint,
    is_complete,
    planned_files,
    real_path,
    write_volumes,
)
from ..io.read import is_dicom_folder, volume_suffix
from ..model import SAINR
from ..protocol import ADAPT_TAG, EXIT_USER
from ..request import ReduceOptions, Target
from ..runtime.consistency import describe as describe_consistency
from ..runtime.device import choose_device
from ..runtime.weights import open_weights, resolve, sha256
from ..train.adapt import (
    AdaptConfig,
    check_adaptable,
    check_budget,
    check_weights_output,
    save_adapted,
)
from .adapt import adapt_with_progress
from .common import (
    CheckedInput,
    add_run_arguments,
    add_target_arguments,
    checked_input,
    native_stderr_silenced,
    options_of,
    progress_printer,
    read_input,
    target_of,
)

#: (input, output, mask output or None) of one volume of a run.
Pair = tuple[Path, Path, Path | None]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sainr reduce``."""
    p.add_argument(
        "input",
        type=Path,
        help="volume file (.nii.gz/.nrrd/.mha), DICOM folder, or folder of volumes",
    )
    p.add_argument("output", type=Path, help="output file, or folder in batch mode")
    add_target_arguments(p)
    p.add_argument("--mask", type=Path, help="also write the gating mask (uint8) here")
    p.add_argument(
        "--series",
        metavar="UID",
        help="DICOM folder with several series: the SeriesInstanceUID to read",
    )
    p.add_argument(
        "--weights", default=None, help="shipped model name or checkpoint file (default: default)"
    )
    p.add_argument(
        "--memory-mb",
        type=float,
        default=ReduceOptions.memory_mb,
        help="working memory budget (default 2048)",
    )
    p.add_argument("--force", action="store_true", help="allow reductions beyond 20x")
    p.add_argument(
        "--preview", type=Path, help="also write a PNG comparison picture (single input)"
    )
    add_run_arguments(p)
    p.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        metavar="N",
        help="first adapt the model to each input for N steps (default 0: off); each step "
        "costs training time on the input (cost and gain: README, adaptation)",
    )
    p.add_argument(
        "--save-adapted",
        type=Path,
        metavar="WEIGHTS.pt",
        help="also save the adapted weights (single input)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every input, output and option, then reduce the inputs one by one. In batch mode
    (and a cohort) an input whose outputs are complete (:func:`sainr.io.outputs.is_complete`) is
    skipped; a single input is always reduced."""
    pairs = _batch_pairs(args.input, args.output, args.mask)
    target, options = target_of(args), options_of(args)
    _check_options(args)
    choose_device(options.device)  # an unavailable device fails before any work
    made = _request(args, target, options)

    def complete(pair: Pair) -> bool:
        return is_complete(_results(pair), _made_for(made, pair[0]))

    if (launch := cohort.launch_from_env()) is not None:  # under torchrun: this process's share
        ok = cohort.run(
            launch,
            pairs,
            options.device,
            lambda: _pair_reducer(target, options, args, made),
            complete,
        )
        return 0 if ok else EXIT_USER
    batch = _is_batch(args.input)
    todo = [pair for pair in pairs if not (batch and complete(pair))]
    for src, dst, _ in (pair for pair in pairs if pair not in todo):
        print(f"{src.name}: skipped (already complete) -> {dst}", file=sys.stderr)
    if not todo:
        return 0
    # Every input to do is planned, once, before the model loads (batch: before the first
    # result is written); the plans are kept, and of the images only the first: the others
    # are read again in turn and run with their plans.
    weights = open_weights(args.weights)
    trained = weights.trained_thickness
    first = _checked(todo[0][0], target, options, args, trained)
    plans = [first.plan] + [_checked(s, target, options, args, trained).plan for s, *_ in todo[1:]]
    if len(pairs) > 1 and (skipped := _skipped_folders(args.input)):
        print(
            f"note: skipped subfolders without a DICOM series: {', '.join(skipped)}",
            file=sys.stderr,
        )
    model = weights.build()
    _note_unused_thickness(model, args)
    written: list[Path] = []
    try:
        for n, (src, dst, mask_dst) in enumerate(todo):
            one = first if n == 0 else CheckedInput(read_input(src, args.series), plans[n])
            net = _model_for(src, one, model, options, args)
            _reduce_one(src, one, dst, mask_dst, net, options, args, _made_for(made, src), written)
    except KeyboardInterrupt as exc:
        if not written or (isinstance(exc, LandedInterrupt) and len(todo) == 1):
            raise  # its own message is true: nothing written, or the one result landed
        rest = len(todo) - len(written)
        raise KeyboardInterrupt(
            f"{len(written)} of {len(todo)} results were written (the last: {written[-1]})"
            + (f"; the other {rest} were not" if rest else "")
        ) from exc
    return 0


def _is_batch(src: Path) -> bool:
    """A folder that is not a DICOM series: its volumes and series are the inputs."""
    return src.is_dir() and not is_dicom_folder(src)


def _checked(
    src: Path,
    target: Target,
    options: ReduceOptions,
    args: argparse.Namespace,
    trained: tuple[float, float] | None,
) -> CheckedInput:
    """:func:`checked_input` (its plan: a given thickness against the model's ``trained``
    range), and with ``--adapt-steps`` the check, from the plan, that the input is large
    enough to adapt to (in batch mode before any result is written)."""
    one = checked_input(src, args.series, target, options, trained)
    if args.adapt_steps != 0:
        try:
            check_adaptable(one.plan)
        except InputImageError as exc:
            raise InputImageError(f"{src.name}: {exc}") from exc
    return one


def _request(args: argparse.Namespace, target: Target, options: ReduceOptions) -> dict[str, Any]:
    """What makes a result what it is, for its record: the target, the options that change
    the voxels, the DICOM series, the adaptation steps, the model's SHA-256 (of the file
    for a checkpoint, from the catalog for a shipped model) and the data consistency step
    after it. Device and memory budget are left out: they change how a result is computed,
    not which."""
    path, expected = resolve(args.weights)
    return {
        "target": {k: v for k, v in asdict(target).items() if k != "force"},
        "slice_thickness_mm": options.slice_thickness_mm,
        "precision": options.precision,
        "nan_policy": options.nan_policy,
        "series": args.series,
        "adapt_steps": args.adapt_steps,
        "model_sha256": expected or sha256(path),
        "consistency": describe_consistency(),
    }


def _made_for(request: dict[str, Any], src: Path) -> dict[str, Any]:
    """The record's ``made`` for the input ``src``: the request and the input's fingerprint."""
    return {**request, "input": input_fingerprint(src)}


def _results(pair: Pair) -> list[Path]:
    """The result and, if asked for, the mask of a pair."""
    return [out for out in pair[1:] if out is not None]


def _note_unused_thickness(model: SAINR, args: argparse.Namespace) -> None:
    """One note when --slice-thickness is given to a model that is not told the thickness
    (a decimation-only checkpoint): it changes nothing, and the summary does not claim it."""
    if args.slice_thickness is not None and not model.config.conditioning:
        print(
            "note: this model does not use the slice thickness, so --slice-thickness changes "
            "nothing; the default model uses it (--weights default)",
            file=sys.stderr,
        )


def _pair_reducer(
    target: Target, options: ReduceOptions, args: argparse.Namespace, made: dict[str, Any]
) -> Callable[[Path, Path, Path | None], None]:
    """Under torchrun: load the model once and return what reduces one input of the share
    (read and checked as it comes, not all first: a bad one fails alone)."""
    model = open_weights(args.weights).build()
    _note_unused_thickness(model, args)
    trained = model.trained_thickness

    def reduce_pair(src: Path, dst: Path, mask_dst: Path | None) -> None:
        one = _checked(src, target, options, args, trained)
        net = _model_for(src, one, model, options, args)
        _reduce_one(src, one, dst, mask_dst, net, options, args, _made_for(made, src), [])

    return reduce_pair


def _model_for(
    src: Path,
    checked: CheckedInput,
    model: SAINR,
    options: ReduceOptions,
    args: argparse.Namespace,
) -> SAINR:
    """``model`` itself without ``--adapt-steps``, else a copy adapted to the input with its
    plan (``ADAPT done total`` lines with ``--progress lines``), saved to ``--save-adapted``."""
    if args.adapt_steps == 0:
        return model
    config = AdaptConfig(steps=args.adapt_steps)
    adapted = adapt_with_progress(
        src.name, checked, model, options, config, args.progress, ADAPT_TAG
    )
    if args.save_adapted is not None:
        save_adapted(adapted, args.save_adapted, args.weights, src.name)
    return adapted.model


def _reduce_one(
    src: Path,
    checked: CheckedInput,
    dst: Path,
    mask_dst: Path | None,
    net: SAINR,
    options: ReduceOptions,
    args: argparse.Namespace,
    made: dict[str, Any],
    written: list[Path],
) -> None:
    """Reconstruct one checked input with its plan, write its result (and mask, with their record ``made``,
    and --preview; ``dst`` is added to ``written`` as soon as it is in place, also when the
    run is stopped as it lands) and say so."""
    update, close = progress_printer(args.progress, src.name)
    try:
        result = reduce_spacing(
            checked.image,
            options=options,
            plan=checked.plan,
            model=net,
            progress=update,
            notice=lambda msg: print(f"note: {msg}", file=sys.stderr),
        )
    finally:
        close()
    for path in (dst, mask_dst):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    outputs = [(result.image, dst)] + ([(result.mask, mask_dst)] if mask_dst else [])
    try:
        with native_stderr_silenced():  # a failed read-back arrives as one error, not MetaIO's
            write_volumes(outputs, inputs=[src], made=made)  # image and mask, or neither
    except LandedInterrupt:
        written.append(dst)
        raise
    written.append(dst)
    if args.preview is not None:
        from ..evaluation.preview import save_comparison

        write_atomically(
            args.preview,
            lambda tmp: save_comparison(
                checked.image, result.image, result.mask, result.info["axis"], tmp
            ),
            ".png",
        )
    info = result.info
    thick = (
        f" ({info['slice_thickness']:.3g} mm thick, {info['slice_thickness_source']})"
        if net.config.conditioning
        else ""
    )
    print(
        f"{src.name}: axis {info['axis_label']}, {info['slices_in']} slices at "
        f"{info['spacing_in']:.4g} mm{thick} -> "
        f"{info['slices_out']} at {info['spacing_out']:.4g} mm, "
        f"gated {100 * info['gated_fraction']:.0f} % ({info['device']}) -> {dst}",
        file=sys.stderr,
    )
    for note in checked.plan.notes if net.config.conditioning else ():
        print(f"note: {note}", file=sys.stderr)


def _batch_pairs(src: Path, output: Path, mask: Path | None) -> list[Pair]:
    """(input, output, mask) triples with every output path checked (name, folder, never a
    file of an input); a folder that is not a DICOM series means batch mode: its volume files
    and DICOM series subfolders (a series is written as ``<folder name>.nii.gz``). Nothing is
    created here."""
    if mask is not None and real_path(mask) == real_path(output):
        raise OutputPathError(f"--mask {mask} is the output path; give it another name")
    if not _is_batch(src):
        destination(output, (src,))
        if mask is not None:
            destination(mask, (src,))
        return [(src, output, mask)]
    for folder in (output, mask):
        if folder is not None:
            check_output_folder(folder, src)
    pairs = [
        (f, output / _batch_name(f), mask / _batch_name(f) if mask else None)
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
        p.name
        for p in src.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not is_dicom_folder(p)
    )


def _batch_name(src: Path) -> str:
    """The output name of a batch input: its own, a DICOM folder's plus ``.nii.gz``."""
    return src.name + ".nii.gz" if src.is_dir() else src.name


def _check_batch_outputs(pairs: list[Pair]) -> None:
    """Batch mode, before anything is read: every output name is one that can be written (a
    known format in any letter case, no odd characters), no output is a folder or a file of
    an input, and no two outputs (images, masks, .mhd data files, records) are the same
    file."""
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
            check_output_name(out)
            real = destination(out, inputs) if out.parent.is_dir() else out.absolute()
            for f in planned_files(real):
                if f in owner:
                    raise OutputPathError(
                        f"the {owner[f]} and the {kind} of {src.name} would both be "
                        f"written to {f}; give --mask its own folder, or rename an input"
                    )
                owner[f] = f"{kind} of {src.name}"


def _check_options(args: argparse.Namespace) -> None:
    """Every option that needs no input read: the DICOM series choice, the picture and the
    adaptation (its steps, the weights output: never into the shipped models, single input)."""
    if args.series is not None and not is_dicom_folder(args.input):
        raise SainrError("--series picks a series of a DICOM folder; the input is not one")
    if args.preview is not None:
        _check_picture_path(args.preview, args.input)
    if args.adapt_steps != 0:
        check_budget(args.adapt_steps, None)
    if args.save_adapted is not None:
        if args.adapt_steps == 0:
            raise SainrError("--save-adapted needs --adapt-steps N (N > 0)")
        if args.input.is_dir() and not is_dicom_folder(args.input):
            raise SainrError("--save-adapted needs a single input volume, not a folder")
        check_weights_output(args.save_adapted, args.weights)


def _check_picture_path(path: Path, src: Path) -> None:
    """--preview: a .png file (so never an input or a volume output) in a writable folder, for
    a single input."""
    if src.is_dir() and not is_dicom_folder(src):
        raise SainrError("--preview needs a single input volume, not a folder")
    if path.suffix.lower() != ".png":
        raise OutputPathError(
            f"--preview writes a PNG picture; give a .png file name, not {path.name}"
        )
    if path.is_dir():
        raise OutputPathError(f"--preview {path} is a folder; give a .png file name")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise OutputPathError(f"--preview folder does not exist: {folder}; create it first")
    check_writable(folder)
