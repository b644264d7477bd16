"""Deliver the alerts of ``v_order_alerts`` to a chat webhook, each once (no Dagster here: the
sensor in ``pipelines/defs/alerts/`` calls :func:`deliver_alerts` once per tick).

One tick: claim the due alerts (``pipelines/warehouse/alerts.py``), POST each as JSON through the
project's HTTP layer, record what happened. Rules, and why:

- **Once.** A row of ``alert_deliveries`` marked delivered is never sent again; an alert is the
  same alert while its (source, order, alert, due_at) is, so one that clears and comes back is not
  repeated. Claims keep two overlapping ticks from sending the same row. The one case no sender
  can rule out is a request the receiver accepted whose answer never came back (a read timeout, a
  process killed between the 2xx and the commit): that alert is tried again, with the same
  ``alert_id`` so a receiver can drop the repeat.
- **Backoff without blocking.** One attempt per request (no sleeping in the HTTP layer); a failure
  sets ``next_attempt_at`` (``ALERTS_RETRY_BASE_SECONDS`` doubling per failure of that alert,
  jitter, at most an hour, or the receiver's ``Retry-After``) and ends the tick's sending: a
  receiver that is down gets one request per tick at most. A tick stops starting requests after
  :data:`SEND_BUDGET_SECONDS`, well inside Dagster's sensor time limit.
- **No secret out.** The webhook URL is a credential (Slack, Mattermost and Discord put the token
  in its path): errors, logs and the table name the receiver as ``scheme://host/…`` only, and
  every message is run through a redactor holding the URL and its parts. Messages carry the
  alert's fields only.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

from pipelines.sources.http import ApiClient, ApiError, Redactor, RetryPolicy
from pipelines.warehouse.alerts import Outcome, PendingAlert, claim_due_alerts, record_outcomes
from pipelines.warehouse.connection import Warehouse

SEND_BUDGET_SECONDS = 20.0  # no request starts later than this into a tick
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_PER_TICK = 25  # chat webhooks take about one message a second; the rest go next tick
CLAIM_SECONDS = 600.0  # longer than any tick; a killed tick's alerts are free again after it
CLAIM_WAIT_SECONDS = 10.0  # a sync committing holds the file: skip the tick rather than wait long
RECORD_WAIT_SECONDS = 120.0  # once sent, wait for the file: an unrecorded delivery would be resent
MAX_BACKOFF_SECONDS = 3600.0

SUBJECTS = {"cpc": "CPC order", "cpl": "CPL order", "swap": "Swap order", "cpamoe": "cpa.moe lead"}
LABELS = {
    "auto_reject_soon": "will be auto-rejected soon",
    "auto_reject_overdue": "is past its auto-reject time",
    "behind_pace": "is behind pace",
    "lead_stuck_on_hold": "is stuck on hold",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_id(alert: PendingAlert) -> str:
    """The alert's stable identity, the same on every attempt (for receivers that de-duplicate)."""
    return f"{alert.source}:{alert.order_id}:{alert.alert}:{_iso(alert.due_at)}"


def message(alert: PendingAlert) -> dict[str, str]:
    """The JSON body: a readable ``text`` line (what Slack, Mattermost and Discord's Slack-compatible
    incoming webhooks display) plus the alert's fields."""
    subject = f"{SUBJECTS.get(alert.source, alert.source)} {alert.order_id}"
    label = LABELS.get(alert.alert, alert.alert.replace("_", " "))
    due = alert.due_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    detail = f": {alert.detail}" if alert.detail else ""
    return {
        "text": f"Needs a person: {subject} {label}{detail} (due {due})",
        "alert_id": alert_id(alert),
        "source": alert.source,
        "order_id": alert.order_id,
        "alert": alert.alert,
        "detail": alert.detail or "",
        "due_at": _iso(alert.due_at),
    }


class Webhook:
    """The receiver: where to POST, and how to name it without its secret parts."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.target = url[len(self.origin) :] or "/"
        host = parts.hostname or "?"
        self.name = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…"
        tokens = [url, url.rstrip("/"), self.target, parts.path, parts.query]
        tokens += [part for part in parts.path.split("/") if _looks_secret(part)]
        tokens += [v for _, v in parse_qsl(parts.query) if _looks_secret(v)]
        tokens += [s for s in (parts.username, parts.password) if s]
        self.secrets = [t for t in tokens if t and t != "/"]
        self.redact = Redactor(self.secrets)

    def client(self) -> ApiClient:
        return ApiClient(
            name="alerts webhook",
            base_url=self.origin,
            headers={"Content-Type": "application/json"},
            secrets=self.secrets,
            credential_vars=("ALERTS_WEBHOOK_URL",),
            retry=RetryPolicy(max_attempts=1, timeout=REQUEST_TIMEOUT_SECONDS),  # backoff is across ticks
            max_concurrency=1,
            json_answers=False,  # Slack answers "ok", Discord 204 with no body
        )


def _looks_secret(part: str) -> bool:
    """A path segment or query value that may be a token (``services``, ``hooks`` are not)."""
    return len(part) >= 6 and not (part.isalpha() and part.islower())


@dataclass
class DeliveryReport:
    """One tick's outcome, in words safe to log (no URL)."""

    delivered: list[PendingAlert] = field(default_factory=list)
    failed: list[tuple[PendingAlert, str]] = field(default_factory=list)
    not_tried: int = 0  # claimed, released for a later tick
    waiting: int = 0  # current, undelivered, not claimed this tick (backoff, or over the cap)
    retry_at: datetime | None = None

    def summary(self) -> str:
        parts = [f"delivered {len(self.delivered)} alert{'s' if len(self.delivered) != 1 else ''}"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({self.failed[0][1]})")
        later = self.not_tried + self.waiting + len(self.failed)
        if later:
            when = f" (next attempt after {self.retry_at:%H:%M:%S} UTC)" if self.retry_at else ""
            parts.append(f"{later} to send later{when}")
        return "; ".join(parts)


def backoff(failures: int, base: float, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after ``failures`` failures: ``base`` doubling, half of it
    jittered (never zero: a receiver that is down is not asked again at the next tick), at most an
    hour; the receiver's ``Retry-After`` when it asks for longer."""
    ceiling = min(MAX_BACKOFF_SECONDS, base * 2 ** max(failures - 1, 0))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return min(max(delay, retry_after or 0.0), MAX_BACKOFF_SECONDS)


def _with_wait(warehouse: Warehouse, seconds: float) -> Warehouse:
    return Warehouse(warehouse.location, memory_limit=warehouse.memory_limit, threads=warehouse.threads,
                     lock_timeout=seconds)


def deliver_alerts(
    warehouse: Warehouse,
    url: str,
    *,
    retry_base_seconds: float,
    log: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DeliveryReport:
    """Send every due alert once (see the module's rules). Raises ``AlertsNotBuilt`` or
    ``WarehouseBusy`` (pipelines.warehouse.alerts) before anything is sent."""
    webhook = Webhook(url)
    token = uuid.uuid4().hex
    started, start_clock = clock(), time.monotonic()
    claim = claim_due_alerts(
        _with_wait(warehouse, CLAIM_WAIT_SECONDS), token=token, now=started,
        claim_until=started + timedelta(seconds=CLAIM_SECONDS), limit=MAX_PER_TICK,
    )
    report = DeliveryReport(waiting=claim.waiting)
    outcomes: list[Outcome] = []
    stop_until: datetime | None = None
    try:
        with webhook.client() as client:
            for alert in claim.alerts:
                if stop_until is not None or time.monotonic() - start_clock > SEND_BUDGET_SECONDS:
                    outcomes.append(Outcome(alert, attempted=False, retry_at=stop_until))
                    report.not_tried += 1
                    continue
                error, retry_after = _post(client, webhook, message(alert))
                now = clock()
                if error is None:
                    outcomes.append(Outcome(alert, attempted=True, delivered_at=now))
                    report.delivered.append(alert)
                    continue
                retry_at = now + timedelta(seconds=backoff(alert.attempts + 1, retry_base_seconds, retry_after))
                outcomes.append(Outcome(alert, attempted=True, retry_at=retry_at, error=error))
                report.failed.append((alert, error))
                stop_until = retry_at  # the receiver is down or refusing: the rest wait with it
                log(f"alert {alert_id(alert)} not delivered (attempt {alert.attempts + 1}): {error}; "
                    f"next attempt after {retry_at:%H:%M:%S} UTC")
    finally:
        record_outcomes(_with_wait(warehouse, RECORD_WAIT_SECONDS), token=token, outcomes=outcomes)
    report.retry_at = min((t for t in (stop_until, claim.next_attempt_at) if t is not None), default=None)
    return report


def _post(client: ApiClient, webhook: Webhook, body: dict[str, str]) -> tuple[str | None, float | None]:
    """One attempt: (None, None) when the receiver answered 2xx, else (the reason in words safe
    to store and log, the receiver's Retry-After)."""
    try:
        status = client.post(webhook.target, json=body).status_code
    except ApiError as err:
        reason = err.reason.removeprefix("gave up after 1 attempts; last error: ")  # one attempt is the design
        reason = webhook.redact(reason if err.status_code is not None else f"no answer: {reason}")[:200]
        return f"{reason} from the alerts webhook {webhook.name}", err.retry_after
    if status // 100 != 2:  # a redirect (not followed: it could lead anywhere) is no delivery
        return f"HTTP {status} from the alerts webhook {webhook.name}", None
    return None, None
