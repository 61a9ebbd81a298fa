"""`python -m parscale_ear ...` runs the command line (also what torchrun -m launches)."""
import sys

from .cli import main

sys.exit(main())
