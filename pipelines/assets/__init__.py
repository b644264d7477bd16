"""Dagster assets: thin functions that call a source's client and the loader."""
