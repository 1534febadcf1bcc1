"""`python -m sapnet_cli ...` (also what `torchrun -m sapnet_cli` runs)."""

from sapnet_cli.app import main

if __name__ == "__main__":
    main()
