"""`sapnet train-seg`: the SOLOv2 instance segmenter trained on pseudo masks.

``stages.seg.solov2`` is the plain-PyTorch core (heads, target assignment, losses, Matrix NMS,
inference); ``stages.seg.d2`` is the optional detectron2 glue on top of it.
"""
