"""Metapic assets (offers, participants, participant daily stats)."""

ASSETS: list = []  # every asset of this source
SYNC_ASSETS: list = []  # current-state ingestion assets materialized by sync_all (take SyncConfig)
CHECKS: list = []
JOBS: list = []
SCHEDULES: list = []
