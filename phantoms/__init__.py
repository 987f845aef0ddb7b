"""Synthetic abdominal CT phantoms with FLARE-23 labels (``generator``), the ``swinxseg phantom``
command that writes one (``cli``), and the demo that segments one with the service (``demo``).

Used by training, tests, the benchmark and the demo; the serving package never imports it.
"""
