"""What the ``sainr`` CLI and the programs that drive it (the Slicer module) agree on.

Torch-free, so that the Slicer module reads the same values in its own process (where PyTorch
may not be installed yet) that the CLI uses in the subprocess, instead of keeping copies.
"""

from __future__ import annotations

#: ``--progress lines``: ``PROGRESS done total`` while the model reconstructs.
PROGRESS_TAG = "PROGRESS"
#: ``--progress lines`` with ``--adapt-steps N``: ``ADAPT done total`` while it adapts first.
ADAPT_TAG = "ADAPT"
#: Exit status of a run stopped by a problem the user can fix (one line on stderr).
EXIT_USER = 2
#: Exit status of an internal error (the traceback is in a report file).
EXIT_INTERNAL = 1
#: Optimizer steps of a per-volume adaptation when none are given.
DEFAULT_ADAPT_STEPS = 200
#: Name of the shipped model used when no weights are given.
DEFAULT_MODEL = "default"
#: PyTorch versions the core supports (pyproject.toml's dependency).
TORCH_REQUIREMENT = ">=2.1"
