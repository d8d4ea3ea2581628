"""Files in and out, torch-free: reading and checking volumes (:mod:`.read`), DICOM series and
their per-frame values (:mod:`.dicom`, :mod:`.dicom_frames`, :mod:`.dicom_file`), the one
output writer (:mod:`.outputs`), temp files and atomic writes (:mod:`.files`) and the
extension's resource folders (:mod:`.resources`)."""
