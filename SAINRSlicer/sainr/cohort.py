"""Cohorts: one batch ``sainr reduce`` shared by the processes PyTorch's ``torchrun`` starts.

``torchrun --nproc_per_node N -m sainr reduce IN_DIR OUT_DIR ...`` starts N copies of the
command (on each machine, with ``--nnodes``). Each copy reads its place from the environment
torchrun sets, takes every WORLD_SIZE-th input of the list sorted by path starting at its RANK,
keeps the results that are already complete (judged by their record, as in a plain batch:
:func:`sainr.io.outputs.is_complete`), and reduces the rest on its own GPU (LOCAL_RANK)
or on its share of the CPU cores. The processes exchange nothing but their results, in one
gather at the end, which rank 0 prints as one summary. A bad input fails that input only: its
process carries on and still reaches the gather, so no process waits for one that gave up.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import DeviceError, SainrError, one_line
from .io.outputs import LandedInterrupt
from .runtime.device import choose_device

#: One input of the batch and where its result (and gating mask, if asked for) go.
Pair = tuple[Path, Path, Path | None]
#: Reduces one input and writes its outputs; raises SainrError for a bad input.
ReduceFn = Callable[[Path, Path, Path | None], None]
#: Whether an input's outputs are already the ones the command would write
#: (:func:`sainr.io.outputs.is_complete` with the command's request: the rule of a plain batch).
CompleteFn = Callable[[Pair], bool]
T = TypeVar("T")

#: How long the first process to finish waits at the gather for the last one. Long, because
#: one process may hold the cohort's slowest inputs (or see all of its own fail at once); a
#: process that dies is noticed by torchrun, which stops the others.
GATHER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1


@dataclass
class Report:
    """What one process did with its share: input names done, kept (already complete) and
    failed (with the reason, on one line)."""

    rank: int
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE;
    None without RANK or WORLD_SIZE (a plain run, which then behaves as ever)."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    try:
        launch = Launch(
            *(int(environ.get(name, "1" if name == "LOCAL_WORLD_SIZE" else "0")) for name in names)
        )
    except ValueError as exc:
        raise SainrError(
            f"{', '.join(names)} must be whole numbers ({exc}); start with torchrun"
        ) from exc
    if not (
        0 <= launch.rank < launch.world_size and 0 <= launch.local_rank < launch.local_world_size
    ):
        raise SainrError(
            f"RANK {launch.rank}, WORLD_SIZE {launch.world_size}, LOCAL_RANK {launch.local_rank}, "
            f"LOCAL_WORLD_SIZE {launch.local_world_size} is no place in a launch; start with torchrun"
        )
    return launch


def share(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank``'s share of ``items`` (in the same order in every process): every
    ``world_size``-th one from index ``rank``. The shares are disjoint and cover ``items``,
    and each is known without any communication. They are taken from all the inputs, not only
    from the ones still to do, so that they never depend on what another process has already
    written; a cohort cut short leaves each process about the same amount to redo."""
    return list(items[rank::world_size])


def bind_device(launch: Launch, name: str) -> torch.device:
    """The device ``--device name`` means for this process, made the default it computes on:
    on CUDA its own GPU (LOCAL_RANK; ``cuda:N`` pins every process to GPU N), on the CPU
    ``torch.set_num_threads`` with its share of the cores (torchrun's OMP_NUM_THREADS=1 would
    leave the others idle)."""
    device = choose_device(name)
    if device.type == "cuda":
        if device.index is None:
            if launch.local_world_size > torch.cuda.device_count():
                raise DeviceError(
                    f"{launch.local_world_size} processes per machine but {torch.cuda.device_count()} "
                    "GPU(s) visible; give torchrun --nproc_per_node at most that many"
                )
            device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        torch.set_num_threads(max(1, cores // launch.local_world_size))
    return device


def join(launch: Launch) -> dist.Store:
    """The key-value store torchrun set up for the launch (``env://``: MASTER_ADDR/PORT; the
    elastic agent's own store where it shares one). Reports travel through it, not through a
    process group: a gloo group's worker threads could abort a process at exit ("terminate
    called without an active exception") after its work was done: 3 of ~30 test runs here."""
    try:
        store, _, _ = next(
            dist.rendezvous("env://", launch.rank, launch.world_size, timeout=GATHER_TIMEOUT)
        )
    except (ValueError, RuntimeError) as exc:
        raise SainrError(
            f"could not join the other processes ({exc}); start with torchrun"
        ) from exc
    return store


def reduce_share(
    rank: int, pairs: Sequence[Pair], prepare: Callable[[], ReduceFn], complete: CompleteFn
) -> Report:
    """Reduce the inputs of ``pairs`` whose outputs are not ``complete``. ``prepare`` (loading
    the model) runs once, before the first input to do. A user error fails that input (or, from
    ``prepare``, every input to do) and is printed at once; the others go on."""
    report, reduce_one = Report(rank), None
    for pair in pairs:
        name = pair[0].name
        if complete(pair):
            report.kept.append(name)
            continue
        try:
            reduce_one = reduce_one or prepare()
            reduce_one(*pair)
        except SainrError as exc:
            reason = one_line(str(exc))
            print(f"sainr: error: {name}: {reason}", file=sys.stderr, flush=True)
            report.failed.append((name, reason))
            continue
        except KeyboardInterrupt as exc:
            if isinstance(exc, LandedInterrupt):  # stopped as the result landed: it is whole
                report.done.append(name)
                what = f"this process wrote {len(report.done)} result(s) (the last: {exc.path})"
            else:
                what = f"this process wrote {len(report.done)} result(s), not the one in progress"
            raise KeyboardInterrupt(f"{what}; the same command does the rest") from exc
        report.done.append(name)
    return report


def gather(report: Report, store: dist.Store, world_size: int) -> list[Report] | None:
    """Every process's report at rank 0 (None elsewhere): the launch's one exchange, which
    every process reaches whatever happened to its inputs. Rank 0 waits for all of them."""
    store.set(_report_key(report.rank), pickle.dumps(report))
    if report.rank != 0:
        return None
    keys = [_report_key(rank) for rank in range(world_size)]
    store.wait(keys, GATHER_TIMEOUT)
    return [pickle.loads(store.get(key)) for key in keys]


def _report_key(rank: int) -> str:
    return f"sainr/cohort/report/{rank}"


def summary(reports: Sequence[Report]) -> str:
    """One line of totals over all processes, then one line per failed input."""
    done, kept = sum(len(r.done) for r in reports), sum(len(r.kept) for r in reports)
    failed = [(name, r.rank, why) for r in reports for name, why in r.failed]
    lines = [
        f"sainr: cohort of {done + kept + len(failed)} input(s) on {len(reports)} process(es): "
        f"{done} done, {kept} skipped (already complete), {len(failed)} failed"
    ]
    lines += [f"sainr: failed: {name} (rank {rank}): {why}" for name, rank, why in failed]
    return "\n".join(lines)


def run(
    launch: Launch,
    pairs: Sequence[Pair],
    device: str,
    prepare: Callable[[], ReduceFn],
    complete: CompleteFn,
) -> bool:
    """This process's part of a cohort: its share of ``pairs`` (sorted by input path) reduced
    on its device, unless ``complete``, the reports gathered and, at rank 0, the summary
    printed on stderr.

    Returns False at rank 0 when an input failed anywhere, else True: the other processes
    end successfully once their reports are sent (their failures are rank 0's to report), so
    that torchrun never stops rank 0 before it has printed the summary."""
    mine = share(sorted(pairs, key=lambda pair: str(pair[0])), launch.rank, launch.world_size)
    bind_device(launch, device)
    store = join(launch)
    report = reduce_share(launch.rank, mine, prepare, complete)
    reports = gather(report, store, launch.world_size)
    if reports is None:
        return True
    print(summary(reports), file=sys.stderr, flush=True)
    return not any(r.failed for r in reports)
