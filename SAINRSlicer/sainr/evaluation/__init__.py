"""SA-INR against interpolation on HR volumes with simulated thick slices (``sainr evaluate``).

Modules: :mod:`.settings` (what a run evaluates), :mod:`.cases` (HR volumes and simulated
acquisitions), :mod:`.methods` (interpolators, B-spline + Wiener and SA-INR variants),
:mod:`.eclare` (the ECLARE adapter), :mod:`.figures`, :mod:`.report` (CSV, tables,
configuration), :mod:`.run`, and :mod:`.orthogonal` (the three-orientation check on real
acquisitions without thin truth, ``scripts/three_orientations.py``).

Protocol, per volume:

1. Slice axis: ``--axis``, else the native coarsest axis, else (near-isotropic volume) index
   axis k. Optional in-plane centre crop (``--crop``). The cropped HR volume is normalised once
   with the robust scale of :mod:`sainr.intensity` (as in training); every method and metric
   works in these units, so all methods are scored on one intensity scale.
2. Per slice profile and factor r: the LR slices are centred at HR positions 0, r, 2r, ...
   and acquired with the profile (:mod:`sainr.acquisition`): ``none`` keeps the HR slice
   (pure decimation, integer r only), ``gaussian`` and ``box`` average the HR across a slice
   thickness (``--thickness`` x the LR spacing; 1 = contiguous thick slices, as a clinical
   scan). The thin-slice grid has the HR spacing (c_L = r c_H), so thin slice j lies on HR
   slice j and the truth is HR slices 0 .. n_H - 1: every output slice is scored against a
   real (sharp) HR slice. SA-INR, adaptation and ECLARE are told the slice thickness.
3. Methods on that grid: linear, SimpleITK cubic B-spline, B-spline + Wiener deconvolution
   of the case's true slice profile (:func:`sainr.evaluation.baselines.bspline_wiener`: what a classical
   method does when it knows what SA-INR is told), each SA-INR model through
   :func:`sainr.runtime.inference.super_resolve` told the true thickness, the same model told the
   thickness :mod:`sainr.thickness` estimates from the LR alone (what a user who gives none
   gets) and, for gated models, the same model with the gate removed (LASA on every query)
   to show what gating costs and saves. Optional:
   ``--adapt-steps N``, each model fine-tuned on the case's own LR (:mod:`sainr.train.adapt`) before
   it runs; ``--eclare``, ECLARE (Remedios et al., PyPI ``eclare``, a benchmark-only
   dependency that the extension never imports), which trains a network per volume on its own
   in-plane data: the LR goes to it as a NIfTI with the LR spacing, and its output (slices at
   the in-plane resolution, "same field of view" sampling) is resampled onto the thin-slice
   grid (:func:`.eclare.same_fov_onto_grid`). Times include adaptation and ECLARE's training.
4. Metrics (:mod:`sainr.evaluation.metrics`): PSNR (MAX = truth max) on the whole crop and on its
   foreground (:func:`sainr.evaluation.metrics.foreground_mask`), 3D SSIM, S3 sharpness on planes that
   contain the slice axis, wall time, the fraction of queries that went through LASA and the
   thickness each method was told.

Writes ``results.csv`` (one row per volume, factor and method), ``results.md`` (tables with the
configuration and a GFLOPs section) and ``figure_<volume>_<profile>_x<r>.png``.
"""
