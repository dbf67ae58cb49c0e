"""`python -m rbee.cli` runs the keeper CLI."""

from rbee.cli.main import main

main()
