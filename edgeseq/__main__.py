"""`python -m edgeseq` is the `edgeseq` command."""

from edgeseq.cli import main

main()
