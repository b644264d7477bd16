-- v_status_durations: one row per status interval of every entity, from status_history: when it
-- entered the status, when it left (NULL while current) and how long it stayed. For the current
-- status, `duration` is NULL and `time_in_status` is the time so far (as of the last sync).
SELECT
    h.source,
    h.entity_id,
    h.status,
    h.source_status,
    h.valid_from AS entered_at,
    h.valid_to AS left_at,
    h.valid_to - h.valid_from AS duration,
    coalesce(h.valid_to, c.as_of) - h.valid_from AS time_in_status,
    h.valid_to IS NULL AS is_current
FROM status_history AS h
CROSS JOIN v_warehouse_clock AS c
