"""Shared data model of the pipeline: errors, point annotations, masks/RLE, configs, distributed env."""
