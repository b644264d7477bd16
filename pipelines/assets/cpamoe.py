"""cpa.moe assets (lead register and lead statuses)."""

ASSETS: list = []  # every asset of this source
SYNC_ASSETS: list = []  # current-state ingestion assets materialized by sync_all (take SyncConfig)
CHECKS: list = []
JOBS: list = []
SCHEDULES: list = []
