"""The warehouse layer: the DuckDB connection and its locks, specs -> typing SQL, staging, and the one
loader (merge, history, state). It imports no source, feed or Dagster module."""

from pipelines.warehouse.connection import Warehouse, configure

__all__ = ["Warehouse", "configure"]
