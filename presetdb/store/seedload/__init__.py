"""Frozen loaders that data migrations call; a loader's behaviour never changes once shipped."""
