"""`sapnet export-pseudo` and `sapnet evaluate`: pseudo-label COCO JSON, quality report and overlays."""
