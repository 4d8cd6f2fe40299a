"""`python -m flock_llm` runs the `flock-llm` command."""

import sys

from .cli import main

sys.exit(main())
