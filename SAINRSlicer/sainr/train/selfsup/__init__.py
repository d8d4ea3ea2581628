"""Stage I of self-supervised SA-INR: synthetic thin-slice volumes from real thick-slice ones.

Without thin-slice ground truth (method note §5, after Xuan et al. 2021), a 2D VAE
(:mod:`sainr.model.vae`) learns the in-plane slices of the real thick-slice volumes (the only
sharp planes they have). A volume with slice spacing c_L then gets m - 1 new slices between
slices i and i + 1 by decoding the lerp of their posterior means, (1 - t) mu_i + t mu_{i+1},
at t = k / m: a synthetic volume at c_L / m whose slice j m lies exactly at input slice j.
Stage II is the supervised trainer, unchanged, on those volumes.

Two modes:

- ``latent`` (the paper's): every output slice is decode(lerp(mu_i, mu_{i+1}, t)).
- ``residual`` (default, our design): lerp(real_i, real_{i+1}, t) + decode(lerp(mu_i,
  mu_{i+1}, t)) - lerp(decode(mu_i), decode(mu_{i+1}), t). The VAE contributes only the
  non-linear anatomical change it sees between the slices; its blur and reconstruction error
  cancel, so the real slices come back exactly (t = 0) with their sharpness.

Intensities use the robust per-volume scale of :mod:`sainr.intensity`; the output is float32 in
the input's units (interpolated values are not integers). Each synthesis writes the volume, its
sanity checks as JSON ((a) reconstruction PSNR of the real slices, (b) PSNR of the synthetic
volume decimated by m against the real slices, exact in residual mode) and (c) a PNG of a
plane across the slices, for spotting morphing. ``train_vae`` resumes from ``OUT/vae.pt``.

Modules: :mod:`.slices` (the data), :mod:`.vae_training` (stage I training) and
:mod:`.synthesis` (the synthetic volumes).
"""
