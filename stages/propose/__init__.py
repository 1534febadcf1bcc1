"""`sapnet propose`: class-agnostic mask proposals for every annotated point, written to a zarr store."""
