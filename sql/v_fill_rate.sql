-- v_fill_rate: one row per order (one per side for swap orders): how much of what was ordered has
-- been delivered. cpc: clicks; cpl: fans (quantity_*); swap: per side, units ordered = the order's
-- quantity, delivered = that side's fans_subscribed_total. fill_rate = delivered / ordered, NULL
-- when nothing (or an unknown quantity) was ordered; not capped (over-delivery shows as > 1).
WITH units AS (
    SELECT 'cpc' AS source, order_id, CAST(NULL AS VARCHAR) AS side, status,
           clicks_ordered AS units_ordered, clicks_delivered AS units_delivered
    FROM cpc_orders
    UNION ALL
    SELECT 'cpl', order_id, NULL, status, quantity_ordered, quantity_delivered
    FROM cpl_orders
    UNION ALL
    SELECT 'swap', o.order_id, s.side, o.status, o.quantity, s.fans_subscribed_total
    FROM swap_orders AS o
    JOIN swap_order_sides AS s USING (order_id)
)
SELECT source, order_id, side, status, units_ordered, units_delivered,
       CASE WHEN units_ordered > 0 THEN units_delivered / units_ordered END AS fill_rate
FROM units
