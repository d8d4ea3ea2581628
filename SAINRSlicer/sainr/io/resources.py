"""Where the extension's ``Resources`` folder lies (torch-free): the shipped models, the sample
volume, the panel's UI and icons.

Two layouts hold it: the Slicer install tree (``Resources`` beside the package, in the
scripted-modules folder) and the source tree (``Resources`` at the repository root, two levels
up; Slicer can load the module from there too, and an editable pip install runs from there).
Every part of the project finds resources through :func:`resource_folders`, so both layouts
are searched the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path

#: The ``sainr`` package folder (this module lies in its ``io`` subpackage).
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Candidate ``Resources`` folders: install layout first, then the source tree.
_ROOTS = (_PACKAGE_DIR.parent / "Resources", _PACKAGE_DIR.parents[1] / "Resources")


def resource_folders(subfolder: str = "") -> list[Path]:
    """The existing ``Resources/<subfolder>`` folders, install layout first."""
    return [root / subfolder for root in _ROOTS if (root / subfolder).is_dir()]


def resource_path(relative: str) -> Path:
    """The file ``Resources/<relative>`` of the first layout that has it; FileNotFoundError
    (naming the file) when neither does."""
    for root in _ROOTS:
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(f"SAINRSlicer resource not found: Resources/{relative}")
