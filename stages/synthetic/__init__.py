"""Seeded synthetic datasets (images, point annotations, proposal stores) for tests and benchmarks."""
