-- v_earnings: one row per order: what it has earned so far, in its currency.
-- cpc: total_earned (USD; the API computes min(ordered, delivered) x price_per_click).
SELECT
    'cpc' AS source,
    order_id,
    'USD' AS currency,
    total_earned AS earned,
    status
FROM cpc_orders
