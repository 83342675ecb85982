"""Analysis of distilled sets and backbones (SPEC §8): alignment, PCA, neighbors, export, reports, ablations.

Every module here is imported on demand by the CLI; matplotlib (extra
``analysis``) is imported lazily inside the functions that draw.
"""
