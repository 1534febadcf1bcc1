"""sapnet pipeline stages: points -> propose -> select -> export-pseudo -> train-seg.

Each stage is a library function over a typed config object; `sapnet_cli` is only a thin CLI over them.
"""

__version__ = "0.1.0"
