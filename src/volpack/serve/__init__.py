"""Serving archives without restoring them: NBD export and FUSE mount over the random-access reader."""
