-- v_summary: the view to open first: per source and canonical status, how many orders (leads,
-- campaigns), how much was ordered and delivered, and what they earned, per currency.
WITH fill AS (
    SELECT source, order_id, sum(units_ordered) AS ordered, sum(units_delivered) AS delivered
    FROM v_fill_rate GROUP BY ALL
)
SELECT e.source, CAST(e.status AS VARCHAR) AS status, e.currency,
       count(*) AS orders,
       sum(f.ordered) AS units_ordered,
       sum(f.delivered) AS units_delivered,
       sum(e.earned) AS earned
FROM v_earnings AS e
LEFT JOIN fill AS f USING (source, order_id)
GROUP BY ALL
