"""`sapnet points`: sample one point per object inside its ground-truth mask."""
