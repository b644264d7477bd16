"""Feeds: what to fetch from an API and how its records become warehouse rows (no Dagster)."""
