"""Dagster code location: ingestion assets, views and checks for the affiliate-network warehouse."""
