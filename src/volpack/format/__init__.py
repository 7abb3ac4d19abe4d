"""The only code that knows the bytes on the medium (docs/format.md): records, writer, readers.

It never imports source/ or detect/: the writer takes tables and dense bytes, the readers give
them back.
"""
