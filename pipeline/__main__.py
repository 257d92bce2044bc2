"""`python -m pipeline ...` is the `reg2cls` CLI."""
from .cli import main

main()
