"""Exit at once: with status argv[1], or by signal argv[2] if given (for exit-status tests)."""

import os
import sys

if len(sys.argv) > 2:
    os.kill(os.getpid(), int(sys.argv[2]))
sys.exit(int(sys.argv[1]))
