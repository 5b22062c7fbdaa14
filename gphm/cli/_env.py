"""Process environment every command needs, set once on import of :mod:`gphm.cli`
(before any command imports torch, ``datasets`` or ``huggingface_hub``, which read it
when they load). A user's explicit setting wins (``setdefault``).

* ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``: nothing is downloaded at run time; the
  Hugging Face libraries run offline.
* ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP worker threads sleep instead of spin-waiting
  for work. torch's CPU kernels are many medium-sized parallel regions; with the default
  (active) policy a worker spins between them, so two commands sharing the cores burn each
  other's time: a ``model=tiny`` training beside a second one ran 4x slower instead of 2x.
  The OpenMP runtime reads the variable once, when it loads (with torch), hence here.

Only the commands set these. ``import gphm`` (the Python API) leaves the process
environment alone: a library should not change its host's settings, and by the time a
notebook imports gphm, torch (and its OpenMP runtime) is usually loaded already, where
setting the variable has no effect. API users who share the CPU set
``OMP_WAIT_POLICY=PASSIVE`` before starting Python.
"""

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
THREADING = {"OMP_WAIT_POLICY": "PASSIVE"}

for _key, _value in {**OFFLINE, **THREADING}.items():
    os.environ.setdefault(_key, _value)
