"""Restore targets: thin files and block devices (raw), qcow2 images, LVM physical layouts, and
the comparer behind ``verify --against``. A target is opened only after the archive's header and
tables checked out; writes arrive in increasing volume order.
"""
