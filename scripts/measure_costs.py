"""Kept for old instructions: the cost tables are measured by `quantcli measure-costs` now."""

import sys

from quantcli.cli import main

if __name__ == "__main__":
    sys.exit(main(["measure-costs", *sys.argv[1:]]))
