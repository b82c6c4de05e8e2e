"""Packaging, lint and layering checks over the whole repository."""
