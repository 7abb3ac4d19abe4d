"""Compaction: the address table (used volume blocks → sequential dense blocks) and the dense
volume, either gathered on the fly from the source or copied first to a staging file/device.
"""
