-- v_earnings: one row per order, lead or campaign: what it has earned so far, in its currency.
--   cpc, cpl        total_earned (USD)
--   swap            transactions_sum_total of the side(s) that are mine (USD); NULL when neither is
--   cpamoe          the configured payout of the lead's offer (cpamoe_payouts, loaded from
--                   CPAMOE_PAYOUTS_FILE) for approved leads whose status is not Return (11) or
--                   Deleted (12); 0 for other leads; NULL where no payout is configured
--   metapic_offer   sum of participant clicks x the offer's cpc + sum of payment_amount, in the
--                   offer's currency (order_id = the offer id as text)
SELECT 'cpc' AS source, order_id, 'USD' AS currency, total_earned AS earned, status
FROM cpc_orders
UNION ALL
SELECT 'cpl', order_id, 'USD', total_earned, status
FROM cpl_orders
UNION ALL
SELECT 'swap', o.order_id, 'USD',
       (SELECT sum(s.transactions_sum_total) FROM swap_order_sides AS s
        WHERE s.order_id = o.order_id AND s.is_mine),
       o.status
FROM swap_orders AS o
UNION ALL
SELECT 'cpamoe', l.lead_id, p.currency,
       CASE WHEN p.amount IS NULL THEN NULL
            WHEN l.stage = 'approve' AND coalesce(l.status_code, 0) NOT IN (11, 12) THEN p.amount
            ELSE 0 END,
       l.status
FROM cpamoe_leads AS l
LEFT JOIN cpamoe_payouts AS p ON p.offer_id = l.offer_id
UNION ALL
SELECT 'metapic_offer', CAST(o.offer_id AS VARCHAR), o.currency,
       coalesce(sum(pt.clicks), 0) * o.cpc + coalesce(sum(pt.payment_amount), 0),
       o.status
FROM metapic_offers AS o
LEFT JOIN metapic_participants AS pt ON pt.offer_id = o.offer_id
GROUP BY o.offer_id, o.currency, o.cpc, o.status
