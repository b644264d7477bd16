"""cpa.moe tables (submitted leads and their statuses)."""
