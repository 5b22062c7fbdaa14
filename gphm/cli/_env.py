"""Process environment every command needs, set once on import of :mod:`gphm.cli`
(before any command imports ``datasets`` or ``huggingface_hub``, which read it then).

Nothing is downloaded at run time (DESIGN.md §7): the Hugging Face libraries run offline.
A user's explicit setting wins (``setdefault``).
"""

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

for _key, _value in OFFLINE.items():
    os.environ.setdefault(_key, _value)
