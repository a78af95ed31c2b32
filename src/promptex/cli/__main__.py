"""`python -m promptex.cli`: how `promptex up` and the tests start a command with this interpreter."""

from promptex.cli import main

main(prog_name="promptex")  # messages name the command as a user types it
