"""cpa.moe: the lead register (CSV files) and lead statuses."""
