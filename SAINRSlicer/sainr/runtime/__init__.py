"""Running a trained model: device and precision, tiled inference in bounded chunks
(:mod:`.inference`), the int8 backend (:mod:`.int8`), the memory allocator's tuning
(:mod:`.heap`) and the model catalog and checkpoints (:mod:`.weights`)."""
