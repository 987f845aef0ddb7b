"""swinxseg runtime: CT in, FLARE-23 mask out, on the input's own grid, under a GPU memory cap."""

__version__ = "0.1.0"
