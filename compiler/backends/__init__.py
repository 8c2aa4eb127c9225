"""Backends turn the level graph into something else: a diagram, a module, source."""
