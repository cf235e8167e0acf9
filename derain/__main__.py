"""``python -m derain``: the command line without the installed ``derain`` script (a bare GPU box)."""

from .cli import main

main()
