"""One asset per SQL view of ``sql/``."""
