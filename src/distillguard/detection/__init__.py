"""Harvest detection: per-account signals, account risk with reasons, campaigns."""
