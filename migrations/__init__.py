"""One-off migrations of shipped results, kept out of the engine: each is `python -m migrations.NAME`."""
