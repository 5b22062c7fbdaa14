"""Process environment every command needs, set once on import of :mod:`gphm.cli`
(before any command imports torch, ``datasets`` or ``huggingface_hub``, which read it
when they load). A user's explicit setting wins (``setdefault``).

* ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``: nothing is downloaded at run time; the
  Hugging Face libraries run offline.

OpenMP waiting is left to the user on purpose. With ``OMP_WAIT_POLICY=PASSIVE`` idle
worker threads sleep between torch's many medium-sized parallel regions instead of
spinning, so two commands sharing the cores do not burn each other's time (a
``model=tiny`` training beside a second one ran ~4x slower with the default policy) —
but every wake-up then costs a futex round trip, and a command alone runs much slower:
40 stage-2 steps of the demo model took 31.2 s with PASSIVE against 19.4 s with the
default policy on 2 cores (33.1 s on one thread), which made the demo 33 instead of 15
minutes. A command alone is the common case, so the default policy stays; when running
several commands at once set ``OMP_WAIT_POLICY=PASSIVE`` (or fewer ``OMP_NUM_THREADS``)
yourself — ``python scripts/bench.py contention`` measures both. The OpenMP runtime reads
the variable once, when it loads with torch; this module runs before that, so
:data:`THREADING` is the one place to set a policy for every command.

Only the commands set these. ``import gphm`` (the Python API) leaves the process
environment alone: a library should not change its host's settings.
"""

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
#: OpenMP settings every command applies before torch loads (none: see the docstring).
THREADING: dict[str, str] = {}

for _key, _value in {**OFFLINE, **THREADING}.items():
    os.environ.setdefault(_key, _value)
