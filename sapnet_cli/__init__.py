"""The `sapnet` command line: a thin Typer layer over the library functions in `stages`."""
