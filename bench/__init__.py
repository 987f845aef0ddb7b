"""Side-by-side benchmark of swinxseg against the authors' pipeline (see bench/README.md)."""
