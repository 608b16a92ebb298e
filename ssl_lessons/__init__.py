"""ssl_lessons: the library behind the course notebooks — one concept per module.

data -> augment -> backbones -> heads / losses -> methods -> train (one loop) -> evaluation / visualize
"""
__version__ = "0.1.0"
