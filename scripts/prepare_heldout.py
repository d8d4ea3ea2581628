"""Write the VALIDATION volumes into a folder (decisions are made on these; the test volumes
of scripts/prepare_test.py are reported only): "knee qDESS (training subject, held-out rows)",
rows 300-415 along array axis j of the training knee (rows 0-279 are training data, see
configs/default.toml), and links to the knee FAIR volume and to the MNI152 template (an
average of 152 subjects, smoother than any single scan). Used by scripts/evaluate_heldout.sh,
scripts/compare_eclare.sh and scripts/choose_wiener_nsr.py.

Usage: python scripts/prepare_heldout.py DATA OUT
"""

import os
import sys

import SimpleITK as sitk


def main(data: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    knee = sitk.ReadImage(f"{data}/knee_qdess_echo1_sag_0p31x0p31x1p5.nii.gz")
    sitk.WriteImage(knee[:, 300:416, :], f"{out}/knee_qdess_heldout_rows300-415.nii.gz", True)
    for name in ("knee_fair_T_1mm", "brain_mni152_2009a_sym_t1_1mm"):
        os.symlink(os.path.realpath(f"{data}/{name}.nii.gz"), f"{out}/{name}.nii.gz")


if __name__ == "__main__":
    main(*sys.argv[1:])
