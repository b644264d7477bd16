-- v_warehouse_clock: the time the warehouse's data is "as of": the last committed sync (the
-- current time before any sync). Alerts and current durations are measured against it, so a
-- view read days after the last sync describes what was known then, not a guess about now.
SELECT coalesce(max(last_synced_at), now()) AS as_of
FROM sync_state
