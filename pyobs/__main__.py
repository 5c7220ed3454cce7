import sys

from pyobs.cli import main

sys.exit(main())
