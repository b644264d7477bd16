-- v_order_alerts: orders and leads that need a person, as of the last sync.
--   auto_reject_soon    CPL or swap order still waiting more than 48 h after creation and
--                       less than 72 h (OnlyTraffic auto-rejects after 3 days);
--                       due_at = created_at + 3 days, still ahead
--   auto_reject_overdue CPL or swap order still waiting 72 h or more after creation: its
--                       auto-reject time has passed but the last sync still saw it waiting (the
--                       API is late, or its feed has not synced since); due_at = created_at +
--                       3 days, already past
--   behind_pace         accepted swap order whose delivered share (fans_subscribed_total /
--                       quantity, the lower of its two sides) trails the elapsed share of its
--                       deadline (started_at + max_days) by more than 25 points; due_at = deadline
--   lead_stuck_on_hold  cpa.moe lead on hold for more than 14 days; due_at = 14 days after it
--                       entered hold
WITH clock AS (SELECT as_of FROM v_warehouse_clock),
waiting AS (
    SELECT 'cpl' AS source, order_id, created_at FROM cpl_orders WHERE source_status = 'waiting'
    UNION ALL
    SELECT 'swap', order_id, created_at FROM swap_orders WHERE source_status = 'waiting'
),
swap_pace AS (
    SELECT o.order_id,
           o.started_at + to_days(CAST(o.max_days AS INTEGER)) AS deadline,
           epoch(c.as_of - o.started_at) / (o.max_days * 86400.0) AS elapsed_share,
           min(s.fans_subscribed_total) / o.quantity AS delivered_share
    FROM swap_orders AS o
    JOIN swap_order_sides AS s USING (order_id)
    CROSS JOIN clock AS c
    WHERE o.source_status = 'accepted' AND o.max_days > 0 AND o.quantity > 0
      AND o.started_at IS NOT NULL
    GROUP BY o.order_id, o.started_at, o.max_days, o.quantity, c.as_of
),
on_hold AS (
    SELECT h.entity_id AS lead_id, h.valid_from AS entered_at
    FROM status_history AS h
    JOIN cpamoe_leads AS l ON l.lead_id = h.entity_id AND l.stage = 'hold'
    WHERE h.source = 'cpamoe' AND h.valid_to IS NULL AND h.source_status = 'hold'
)
SELECT w.source, w.order_id,
       CASE WHEN c.as_of < w.created_at + INTERVAL 3 DAY THEN 'auto_reject_soon'  -- due_at ahead
            ELSE 'auto_reject_overdue' END AS alert,
       'waiting for ' || CAST(round(epoch(c.as_of - w.created_at) / 3600) AS BIGINT)
           || ' h; auto-rejected after 72 h' AS detail,
       w.created_at + INTERVAL 3 DAY AS due_at
FROM waiting AS w CROSS JOIN clock AS c
WHERE c.as_of - w.created_at > INTERVAL 48 HOUR
UNION ALL
SELECT 'swap', p.order_id, 'behind_pace',
       printf('%.0f%% delivered, %.0f%% of the time elapsed', 100 * p.delivered_share,
              100 * least(p.elapsed_share, 1)),
       p.deadline
FROM swap_pace AS p
WHERE p.delivered_share < least(p.elapsed_share, 1) - 0.25
UNION ALL
SELECT 'cpamoe', h.lead_id, 'lead_stuck_on_hold',
       'on hold for ' || CAST(floor(epoch(c.as_of - h.entered_at) / 86400) AS BIGINT) || ' days',
       h.entered_at + INTERVAL 14 DAY
FROM on_hold AS h CROSS JOIN clock AS c
WHERE c.as_of - h.entered_at > INTERVAL 14 DAY
