-- v_fill_rate: one row per order (per side for swap orders): how much of what was ordered
-- has been delivered. fill_rate = units_delivered / units_ordered, NULL when nothing (or an
-- unknown quantity) was ordered, not capped at 1 (over-delivery shows as > 1).
SELECT
    'cpc' AS source,
    order_id,
    CAST(NULL AS VARCHAR) AS side,
    status,
    clicks_ordered AS units_ordered,
    clicks_delivered AS units_delivered,
    CASE WHEN clicks_ordered > 0 THEN clicks_delivered / clicks_ordered END AS fill_rate
FROM cpc_orders
