"""Read stdin to its end, write it upper-cased to stdout and its length to stderr."""

import sys

data = sys.stdin.read()
sys.stdout.write(data.upper())
sys.stderr.write(f"{len(data)} bytes\n")
