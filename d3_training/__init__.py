"""D³ training: experts with hooks, adapters, losses, datasets, the accelerate trainer and `d3-train`.

See docs/training.md. The runtime package `d3_perception` never imports this one.
"""
