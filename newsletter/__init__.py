"""newsletter: a self-hosted featured-stories email digest."""

__version__ = "0.1.0"
