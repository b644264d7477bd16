"""``alerts_webhook``: posts every new alert of ``v_order_alerts`` once to ``ALERTS_WEBHOOK_URL``
(the delivery rules are pipelines/alerts.py's; what was sent is the warehouse table
``alert_deliveries``, not this sensor's cursor, which it leaves unused).

Loaded only when ``ALERTS_WEBHOOK_URL`` is set where the definitions load, and then RUNNING: with
no receiver there is nothing a tick could do, and a sensor that is not there cannot be started by
hand by mistake, nor skip every 30 s. Setting the variable takes effect when the code location
reloads, like the schedules' variables. A tick that finds it unset anyway skips and says so.

A tick requests no run (delivering is quick and idempotent per alert, and a run per alert would
crowd the run list): it skips with what it did as the message, or fails, naming the receiver by
host only, when a delivery failed (retried by a later tick after its backoff).
"""

import dagster as dg

from pipelines import settings
from pipelines.alerts import Webhook, deliver_alerts
from pipelines.resources import WarehouseResource
from pipelines.warehouse.alerts import AlertsNotBuilt, WarehouseBusy
from pipelines.warehouse.connection import Warehouse

SENSOR_NAME = "alerts_webhook"
URL_VARIABLE = "ALERTS_WEBHOOK_URL"
# ALERTS_INTERVAL_SECONDS, 30 by default (tests that run the daemon tick faster)
INTERVAL_SECONDS = max(int(settings.value("ALERTS_INTERVAL_SECONDS")), 1)


class AlertDeliveryFailed(Exception):
    """A tick's delivery failed (the alert stays due; a later tick retries it after its backoff)."""


@dg.sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Posts each new row of v_order_alerts once to ALERTS_WEBHOOK_URL (JSON with a readable `text`); "
        "what was sent, and failed attempts, are in the warehouse table alert_deliveries."
    ),
)
def alerts_webhook(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    try:
        url = settings.value(URL_VARIABLE)
    except ValueError as exc:  # the sentence names the variable, never its value
        raise AlertDeliveryFailed(str(exc)) from None
    if not url:
        return dg.SkipReason(f"{URL_VARIABLE} is not set where this code location runs: no alert is sent")
    webhook = Webhook(url)
    store = Warehouse(warehouse.path, memory_limit=warehouse.memory_limit, threads=1)
    try:
        report = deliver_alerts(
            store, url, retry_base_seconds=settings.value("ALERTS_RETRY_BASE_SECONDS"), log=context.log.warning
        )
    except (AlertsNotBuilt, WarehouseBusy) as exc:
        return dg.SkipReason(f"{exc}; trying again at the next tick")
    except Exception as exc:  # whatever it was, its text leaves without the URL
        raise AlertDeliveryFailed(webhook.redact(f"{type(exc).__name__}: {exc}")) from None
    summary = f"{report.summary()} to the alerts webhook {webhook.name}"
    if report.failed:
        raise AlertDeliveryFailed(summary)
    if report.delivered:
        context.log.info(summary)
    return dg.SkipReason(summary)


@dg.definitions
def defs() -> dg.Definitions:
    """The sensor when the variable is set (read each time the definitions load)."""
    return dg.Definitions(sensors=[alerts_webhook] if settings.env(URL_VARIABLE).strip() else [])
