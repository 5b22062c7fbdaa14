"""Datasets: the on-disk format (:mod:`gphm.data.format`), PyTorch loaders
(:mod:`gphm.data.loaders`), importers of other layouts (:mod:`gphm.data.importers`) and
the synthetic head generator (:mod:`gphm.data.synthetic`).

Submodules are imported explicitly (``from gphm.data.format import write_dataset``) so
that importing :mod:`gphm.data` stays cheap.
"""
