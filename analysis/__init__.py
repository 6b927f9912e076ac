"""Rebuild the papers' tables and plots from run records (record.json files)."""
