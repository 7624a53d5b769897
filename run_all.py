#!/usr/bin/env python
"""Train and evaluate a suite of memory methods: `python run_all.py --suite capacity`."""
import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
