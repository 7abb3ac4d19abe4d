"""Used-block detectors: holes (SEEK_DATA), zero scan, filesystem bitmaps and partition tables.

``used_map`` combines them into the volume's used map; a detector may only ever *remove* blocks
that another detector proves unused (a hole is never used). Detectors read, never write.
"""
