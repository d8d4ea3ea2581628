"""Random thick-slice acquisitions for training: which profile, factor, thickness and width
jitter a patch is acquired with (:class:`AcquisitionSampler`), the per-slice widths
(:func:`slice_scales`) and the noisy thickness label the model is told, which may also be
misread as the image estimate misreads it. The acquisition itself is :mod:`sainr.acquisition`,
shared with inference-time thickness estimation and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..acquisition import Acquisition


def slice_scales(acq: Acquisition, n_lr: int, rng: np.random.Generator) -> np.ndarray | None:
    """Per-slice width multipliers drawn uniformly from [1 - jitter, 1 + jitter] (None, and no
    draw from ``rng``, without jitter or for pure decimation)."""
    if acq.jitter == 0 or acq.profile == "none":
        return None
    return rng.uniform(1 - acq.jitter, 1 + acq.jitter, n_lr)


@dataclass(frozen=True)
class AcquisitionSampler:
    """Random acquisitions for training: a profile, a factor (integer for pure decimation),
    a relative thickness drawn uniformly from ``thickness`` and the per-slice width
    ``jitter``; :meth:`told` adds the label noise of a thickness that is only estimated."""

    factors: tuple[float, ...] = (2, 3, 4, 2.5, 3.3)
    profiles: tuple[str, ...] = ("none", "gaussian", "box")
    profile_weights: tuple[float, ...] = (0.25, 0.5, 0.25)
    thickness: tuple[float, float] = (0.5, 1.2)
    jitter: float = 0.0
    label_noise: float = 0.0  # told thickness = true x uniform [1 - label_noise, 1 + label_noise]
    #: share of patches whose label is misread, and the log-uniform range of the misreading
    misread_share: float = 0.0
    misread: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.profiles) != len(self.profile_weights):
            raise ValueError("one weight per profile")
        if "none" in self.profiles and not any(float(f).is_integer() for f in self.factors):
            raise ValueError("pure decimation needs at least one integer factor")
        for p in self.profiles:
            Acquisition(2.0, 1.0, p, self.jitter)  # checks the profile name and the jitter
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if not 0 <= self.misread_share <= 1:
            raise ValueError(f"misread_share must be in [0, 1], got {self.misread_share}")
        if not 0 < self.misread[0] <= self.misread[1]:
            raise ValueError(
                f"misread must be a factor range (0 < low <= high), got {self.misread}"
            )

    def profile(self, rng: np.random.Generator) -> str:
        p = np.asarray(self.profile_weights, dtype=np.float64)
        return str(rng.choice(self.profiles, p=p / p.sum()))

    def factor(self, profile: str, rng: np.random.Generator) -> float:
        usable = [f for f in self.factors if profile != "none" or float(f).is_integer()]
        return float(rng.choice(usable))

    @property
    def relative_range(self) -> tuple[float, float]:
        """The relative slice thicknesses (thickness / slice spacing) this sampler produces:
        ``thickness`` for the Gaussian and box profiles, 1 / factor for pure decimation."""
        values: list[float] = []
        if any(p != "none" for p in self.profiles):
            values += [float(self.thickness[0]), float(self.thickness[1])]
        if "none" in self.profiles:
            values += [1.0 / float(f) for f in self.factors if float(f).is_integer()]
        return min(values), max(values)

    def acquisition(self, profile: str, factor: float, rng: np.random.Generator) -> Acquisition:
        thickness = float(rng.uniform(*self.thickness)) if profile != "none" else 1.0
        return Acquisition(factor, thickness, profile, self.jitter)

    def told(self, true: float, rng: np.random.Generator) -> float:
        """The relative thickness the model is told for a ``true`` one: off by a random factor
        within +-``label_noise`` (no draw from ``rng`` without noise), so that a wrong or
        estimated value at inference costs little. Only the label changes, never the LR."""
        if self.label_noise == 0:
            return true
        return true * float(rng.uniform(1 - self.label_noise, 1 + self.label_noise))

    def shown(self, told: float, rng: np.random.Generator) -> float:
        """The relative thickness a student is shown when the label ``told`` is misread, as
        the image estimate can misread it, too thin or too thick (its errors:
        docs/thickness_estimation.md): for a ``misread_share`` of the patches ``told`` times a
        factor log-uniform in ``misread``, else ``told`` (no draw from ``rng`` when off).
        A distillation teacher keeps ``told``: the student learns the answer the right label
        gives from the image itself."""
        if self.misread_share == 0 or rng.random() >= self.misread_share:
            return told
        low, high = np.log(self.misread)
        return told * float(np.exp(rng.uniform(low, high)))
