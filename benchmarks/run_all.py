"""Run every benchmark in this folder (``make bench``) and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).parent
    status = 0
    for script in sorted(here.glob("bench_*.py")):
        status |= subprocess.call([sys.executable, str(script)], cwd=here)
    sys.exit(status)
