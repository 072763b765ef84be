"""The broken variants (playbook_broken.py) must be importable by name in the gloo processes
`hirune.playbook.launch` forks: this folder goes on sys.path, which the processes inherit."""

import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
