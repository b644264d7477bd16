-- v_earnings_daily: money earned per source, currency and UTC day. The APIs report cumulative
-- totals, so order_daily_snapshots keeps the last value of each order's total seen each day and
-- this view takes day-over-day differences. An order's first day is measured from its baseline
-- (order_baselines: what it had earned when its source's first sync saw it) or, for an order
-- first seen by a later sync (no baseline), from zero. So what was earned before a source's first
-- sync is attributed to no day, what was earned later is attributed to the UTC day of the sync
-- that saw it, and per source and currency the days add up to current earnings minus baselines.
-- An unknown total (NULL, e.g. a cpa.moe lead without a configured payout) counts as zero.
WITH deltas AS (
    SELECT s.source, s.currency, s.day,
           s.earned - coalesce(lag(s.earned) OVER (PARTITION BY s.source, s.order_id ORDER BY s.day),
                               b.earned, 0) AS earned
    FROM order_daily_snapshots AS s
    LEFT JOIN order_baselines AS b USING (source, order_id)
    WHERE s.earned IS NOT NULL
)
SELECT source, currency, day, sum(earned) AS earned
FROM deltas
GROUP BY ALL
