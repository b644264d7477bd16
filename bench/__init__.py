"""The performance harness: ``python -m bench.run`` (``make bench``, ``make bench-quick``).

It measures the real sync (``affwh run`` in a subprocess) against a sandbox served by its own
process, and compares it with a *floor* measured in the same run: the same requests replayed by a
bare concurrent httpx client, and DuckDB loading the raw bodies with its own JSON reader. See
``bench/README.md`` for how to read the figures.
"""
