"""`python -m promptex.cli`: how `promptex up` and the tests start a command with this interpreter."""

from promptex.cli import main

main()
