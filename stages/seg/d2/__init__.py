"""detectron2 glue for the SOLOv2 segmenter: the only package in sapnet that imports detectron2.

Import :mod:`stages.seg.d2.compat` first (it never imports detectron2 at import time); the other modules call
``compat.apply()`` before their detectron2 imports. Importing this package itself imports nothing heavy.
"""
