"""Helpers shared by tests (readers of reference formats, not product code)."""
