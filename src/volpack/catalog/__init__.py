"""The catalog of backups (SQLite): what was backed up, when, where. Rebuildable from media."""
