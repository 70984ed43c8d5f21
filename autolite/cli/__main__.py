"""``python -m autolite.cli``."""
from autolite.cli import main

main()
