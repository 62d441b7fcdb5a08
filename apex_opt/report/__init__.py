"""Rendering: rich tables, JSON documents, launch commands, plots."""
