"""Process environment every command needs, set once on import of :mod:`gphm.cli`
(before any command imports torch, ``datasets`` or ``huggingface_hub``, which read it
when they load). A user's explicit setting wins (``setdefault``).

* ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``: nothing is downloaded at run time; the
  Hugging Face libraries run offline.
* ``GPHM_ADAPTIVE_THREADS=1``: the long loops (training, fitting, tracking) lower torch's
  intra-op thread count while other processes keep the CPUs busy and restore it when
  they are free (:mod:`gphm.io.threads`); ``GPHM_ADAPTIVE_THREADS=0`` keeps the count
  fixed.

Several commands at once. OpenMP's default policy spins idle worker threads between
torch's many medium-sized parallel regions: a command alone runs fastest, but two
commands sharing the cores burn each other's time (a ``model=tiny`` training beside a
second one ran ~4.5x slower than alone). ``OMP_WAIT_POLICY=PASSIVE`` makes the threads
sleep instead, but every wake-up then costs a futex round trip and a command alone runs
much slower: 40 stage-2 steps of the demo model took 31.2 s with PASSIVE against 19.4 s
with the default policy on 2 cores (33.1 s on one thread), which made the demo 33 instead
of 15 minutes. So the commands keep the default policy and adapt the thread count
instead: alone they keep every thread; beside other work (each reading other processes'
CPU use from ``/proc/stat`` about once a second) they go down to what the free cores
allow, one thread for two trainings on 2 cores, which leaves no worker to spin.
``python scripts/bench.py contention`` measures a training alone and beside a second one.
The OpenMP runtime reads its variables once, when it loads with torch; this module runs
before that, so :data:`THREADING` is the one place to set a policy for every command.

Only the commands set these. ``import gphm`` (the Python API) leaves the process
environment alone, and with it the thread count (adaptation is off there unless the user
sets ``GPHM_ADAPTIVE_THREADS=1``): a library should not change its host's settings.
"""

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
#: OpenMP settings every command applies before torch loads (none: see the docstring).
THREADING: dict[str, str] = {}
#: Adaptive intra-op threads (:mod:`gphm.io.threads`), on for every command.
ADAPTIVE_THREADS = {"GPHM_ADAPTIVE_THREADS": "1"}

for _key, _value in {**OFFLINE, **THREADING, **ADAPTIVE_THREADS}.items():
    os.environ.setdefault(_key, _value)
