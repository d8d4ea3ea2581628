"""Learning the model: random thick-slice acquisitions (:mod:`.degradation`), training patches
(:mod:`.data`), the training loop (:mod:`.training`), per-volume adaptation (:mod:`.adapt`) and
the self-supervised stage I (:mod:`.selfsup`)."""
