"""Bundled demo world: procedural toy scenes (world), their prompt grammar and a pixel-level scorer."""
