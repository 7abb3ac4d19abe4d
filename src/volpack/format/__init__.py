"""The only code that knows the bytes on the medium (docs/format.md): records, the typed archive
description and physical-map codec, writer, readers.

It never imports source/ or detect/ (tests/unit/test_imports.py holds this): the writer takes
tables (volpack.physmap, compact.table) and dense bytes, the readers give them back, both
through the media protocols.
"""
