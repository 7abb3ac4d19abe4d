"""Restore targets (thin files, block devices) and the scatter of dense frames back to volume
addresses. Nothing is written before the archive's header and tables check out.
"""
