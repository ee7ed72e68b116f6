"""``python -m muonscope.cli``."""

from muonscope.cli import main

main()
