import sys

from cordfuse.cli import main

sys.exit(main())
