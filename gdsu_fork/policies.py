"""Reusable migration policies (filled in by the state-migration work)."""
