-- v_earnings_daily: money earned per source, currency and UTC day. The APIs report cumulative
-- totals, so order_daily_snapshots keeps the last value of each order's total seen each day and
-- this view takes day-over-day differences. An order first seen on a later day than the
-- source's first snapshot counts from zero (it did not exist before we started watching); what
-- was earned before the first sync of a source is not attributed to any day.
WITH snaps AS (
    SELECT source, order_id, currency, day, earned,
           lag(earned) OVER (PARTITION BY source, order_id ORDER BY day) AS previous,
           min(day) OVER (PARTITION BY source) AS first_day
    FROM order_daily_snapshots
    WHERE earned IS NOT NULL
)
SELECT source, currency, day,
       sum(CASE WHEN previous IS NOT NULL THEN earned - previous
                WHEN day > first_day THEN earned
                ELSE 0 END) AS earned
FROM snaps
GROUP BY ALL
