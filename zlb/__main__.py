"""`python -m zlb` is the `zlb` command."""

from zlb.cli import main

main()
