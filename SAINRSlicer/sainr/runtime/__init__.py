"""Running a trained model: the device and what its CPU offers (:mod:`.device`), the precision
and the float settings training shares (:mod:`.precision`), one backend per precision
(:mod:`.backends`), tiled inference in bounded chunks (:mod:`.inference`), the data
consistency step that makes its thin slices give back the acquired ones (:mod:`.consistency`),
the allocator's tuning for the processes that run inference (:mod:`.heap`) and the model
catalog and checkpoints (:mod:`.weights`)."""
