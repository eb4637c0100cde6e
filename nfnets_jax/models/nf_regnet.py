"""Placeholder: being written (see models/__init__.py)."""
