"""The alerts sensor: each new row of ``v_order_alerts`` posted once to ``ALERTS_WEBHOOK_URL``."""
