-- v_warehouse_clock: the time the warehouse's data is "as of": the last committed sync (the
-- current time before any sync). Alerts and current durations are measured against it, so a
-- view read days after the last sync describes what was known then, not a guess about now.
-- Sync times come from the warehouse clock (pipelines/clock.py: the sandbox's simulated clock in
-- sandbox mode). Before any sync a view cannot read that clock, so now() is the wall clock; no
-- alert or duration is measured against it then, as they all need synced rows.
SELECT coalesce(max(last_synced_at), now()) AS as_of
FROM sync_state
