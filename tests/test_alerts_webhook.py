"""The alerts sensor against a real HTTP receiver on loopback, after real sandbox syncs that raise
alerts: every alert posted once with a readable ``text`` and its fields, retried with backoff
while the receiver is down or refusing, never twice (an alert that clears and comes back, ticks
racing), and never a secret in what the sensor logs, skips with, fails with or stores.

The sensor is evaluated as the daemon does (``evaluate_tick`` on a context built with a real,
SQLite-backed Dagster instance and the definitions the environment gives)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from test_marts import _waiting_order

from conftest import clean_env
from pipelines.config_check import config_problems

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# a webhook URL shaped like Slack's, its token in the path and in the query
HOOK_PATH = "/services/T0SECRET1/B0SECRET2/xoxwebhooktoken4711"
HOOK_QUERY = "?token=q-s3cret-0815"


# -- a receiver ------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """An incoming webhook on loopback: records every POST; ``answers`` (statuses) are given to
    the next requests, then 200 ``ok`` (as Slack answers); ``delay`` slows every answer."""

    port: int
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    retry_after: str = "1"  # sent with a 429
    requests: list[dict] = field(default_factory=list)  # {"path", "status", "body", "content_type"}
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}{HOOK_QUERY}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay)
                with receiver._lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.requests.append({"path": self.path, "status": status, "body": body,
                                              "content_type": self.headers["Content-Type"]})
                # a refusing receiver echoes the URL it was called on, token and all
                answer = b"ok" if status == 200 else json.dumps({"error": f"invalid_token for {self.path}"}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[dict]:
        """Bodies the receiver took (answered 200)."""
        with self._lock:
            return [r["body"] for r in self.requests if r["status"] == 200]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def receiver():
    r = Receiver(free_port())
    yield r
    r.stop()


# -- evaluating the sensor as the daemon does -------------------------------------------------------


@dataclass
class Tick:
    skip_message: str | None
    run_requests: list
    cursor: str | None
    error: Exception | None
    logs: list[str]

    def texts(self) -> list[str]:
        """Everything the tick said, wherever it said it."""
        error = "".join(traceback.format_exception(self.error)) if self.error else ""
        return [self.skip_message or "", repr(self.run_requests), self.cursor or "", error, *self.logs]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def definitions() -> dg.Definitions:
    from pipelines.definitions import build_defs

    return build_defs()


def tick(instance, defs: dg.Definitions | None = None) -> Tick:
    defs = defs or definitions()
    repository = defs.get_repository_def()  # resources bound, as the code server serves it
    sensor = repository.get_sensor_def("alerts_webhook")
    capture = Capture()
    with dg.build_sensor_context(  # as the code server builds it
        instance=instance, repository_def=repository, sensor_name=sensor.name,
        resources={k: v for k, v in repository.get_top_level_resources().items() if k in sensor.required_resource_keys},
    ) as context:
        context.log.addHandler(capture)
        try:
            data = sensor.evaluate_tick(context)
        except Exception as exc:
            return Tick(None, [], context.cursor, exc, capture.lines)
    return Tick(data.skip_message, list(data.run_requests or []), data.cursor, None, capture.lines)


@pytest.fixture
def alerting(world, receiver, monkeypatch):
    """The tiny world synced once with two alerts forced (a CPL order waiting 50 h, a swap order
    60 h) besides whatever it raises itself, the webhook pointing at ``receiver``."""
    _waiting_order(world, "marketer_cpl", hours_ago=50)
    _waiting_order(world, "studio_swap", hours_ago=60)
    world.sync()
    monkeypatch.setenv("ALERTS_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALERTS_RETRY_BASE_SECONDS", "2")
    return world


def current_alerts(w) -> dict[str, tuple]:
    rows = w.query("SELECT source, order_id, alert, detail, due_at FROM v_order_alerts")
    return {f"{s}:{o}:{a}:{due.astimezone(UTC).isoformat().replace('+00:00', 'Z')}": (s, o, a, d, due)
            for s, o, a, d, due in rows}


def deliveries(w) -> dict[str, tuple]:
    rows = w.query("SELECT source, order_id, alert, due_at, attempts, delivered_at, next_attempt_at, last_error, "
                   "claim_token FROM alert_deliveries")
    return {f"{r[0]}:{r[1]}:{r[2]}:{r[3].astimezone(UTC).isoformat().replace('+00:00', 'Z')}": r[4:] for r in rows}


def accepted_ids(receiver: Receiver) -> list[str]:
    return [body["alert_id"] for body in receiver.accepted()]


# -- the tests ----------------------------------------------------------------------------------------


def test_each_new_alert_is_posted_once_as_a_readable_line_with_its_fields(alerting, receiver, instance):
    w = alerting
    receiver.start()
    first = current_alerts(w)
    assert {a for _s, _o, a, _d, _due in first.values()} >= {"auto_reject_soon"}

    t = tick(instance)
    assert t.error is None and t.run_requests == []
    assert sorted(accepted_ids(receiver)) == sorted(first)
    assert t.skip_message.startswith(f"delivered {len(first)} alerts")
    for request in receiver.requests:
        assert request["path"] == HOOK_PATH + HOOK_QUERY and request["content_type"] == "application/json"
        body = request["body"]
        source, order_id, alert, detail, due = first[body["alert_id"]]
        assert (body["source"], body["order_id"], body["alert"], body["detail"]) == (source, order_id, alert, detail)
        assert datetime.fromisoformat(body["due_at"]) == due
        assert body["text"].startswith("Needs a person: ") and order_id in body["text"] and detail in body["text"]
        assert f"(due {due.astimezone(UTC):%Y-%m-%d %H:%M} UTC)" in body["text"]
    cpl = next(b for b in receiver.accepted() if b["source"] == "cpl")
    assert cpl["text"].startswith(f"Needs a person: CPL order {cpl['order_id']} will be auto-rejected soon: waiting for")

    again = tick(instance)  # nothing new: nothing sent
    assert again.error is None and again.skip_message.startswith("delivered 0 alerts")
    assert len(receiver.requests) == len(first)

    # a day later the CPL order is auto-rejected (its alert clears) and the swap order, still
    # waiting, is past its auto-reject time: a new alert, sent once; the cleared one is not re-sent
    w.advance(hours=24)
    w.sync()
    second = current_alerts(w)
    new = set(second) - set(first)
    assert any(key.startswith("swap:") and ":auto_reject_overdue:" in key for key in new)
    tick(instance)
    tick(instance)
    assert sorted(accepted_ids(receiver)) == sorted(set(first) | new)
    stored = deliveries(w)
    assert set(stored) == set(first) | new
    assert all(attempts == 1 and delivered is not None and token is None
               for attempts, delivered, _next, _err, token in stored.values())


def test_an_alert_that_clears_and_comes_back_is_not_sent_again(world, receiver, instance, monkeypatch):
    book = world.sandbox.dataset("studio_swap")
    order = next(o for o in book.orders if o.status == book.completed)
    order.status, order.finished = book.active, None
    order.extra["max_days"] = 20
    order.accepted = world.sandbox.world.now - timedelta(days=12)  # 60 % of the time elapsed
    order.delivered = order.ordered * 0.1
    book._touch()
    world.sync()
    monkeypatch.setenv("ALERTS_WEBHOOK_URL", receiver.start().url)
    tick(instance)
    behind = [b for b in receiver.accepted() if b["alert"] == "behind_pace" and b["order_id"] == order.order_id]
    assert len(behind) == 1

    order.delivered = order.ordered * 0.9  # caught up: the alert clears
    book._touch()
    world.sync()
    assert behind[0]["alert_id"] not in current_alerts(world)
    tick(instance)
    order.delivered = order.ordered * 0.1  # behind again, same deadline: the same alert
    book._touch()
    world.sync()
    assert behind[0]["alert_id"] in current_alerts(world)
    tick(instance)
    assert accepted_ids(receiver).count(behind[0]["alert_id"]) == 1
    assert len(accepted_ids(receiver)) == len(set(accepted_ids(receiver)))


def test_a_receiver_that_is_down_gets_each_alert_once_when_it_is_up_again(alerting, receiver, instance, monkeypatch):
    w = alerting
    monkeypatch.setenv("ALERTS_RETRY_BASE_SECONDS", "4")  # the first retry 2-4 s later
    defs = definitions()
    due = current_alerts(w)

    down = tick(instance, defs)  # nothing listens on the port
    assert isinstance(down.error, Exception) and type(down.error).__name__ == "AlertDeliveryFailed"
    assert "no answer" in str(down.error) and f"http://127.0.0.1:{receiver.port}/…" in str(down.error)
    assert any("not delivered (attempt 1)" in line for line in down.logs)
    stored = deliveries(w)
    assert set(stored) == set(due) and all(d[1] is None and d[4] is None for d in stored.values())
    assert sorted(d[0] for d in stored.values()) == [0] * (len(due) - 1) + [1]  # the rest not tried
    retry_at = max(d[2] for d in stored.values())
    assert retry_at > datetime.now(UTC)

    receiver.start()  # up again, but the backoff has not passed: no request
    waiting = tick(instance, defs)
    assert waiting.error is None and "to send later" in waiting.skip_message and receiver.requests == []

    time.sleep(max((retry_at - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    assert tick(instance, defs).error is None
    assert sorted(accepted_ids(receiver)) == sorted(due)

    # refusing (503), then asking to slow down (429 with Retry-After): retried, accepted once
    receiver.answers = [503, 429]
    w.advance(hours=24)
    w.sync()
    new = set(current_alerts(w)) - set(due)
    assert new
    assert "HTTP 503" in str(tick(instance, defs).error)
    deadline = time.monotonic() + 30
    while set(new) - set(accepted_ids(receiver)) and time.monotonic() < deadline:
        tick(instance, defs)
        time.sleep(0.5)
    assert sorted(accepted_ids(receiver)) == sorted(set(due) | new)
    assert [r["status"] for r in receiver.requests].count(429) == 1
    assert all(d[1] is not None for d in deliveries(w).values())


def test_a_receiver_asking_to_slow_down_is_not_asked_again_before_its_retry_after(alerting, receiver, instance):
    w = alerting
    receiver.answers, receiver.retry_after = [429], "120"
    receiver.start()
    defs = definitions()
    refused = tick(instance, defs)
    assert "HTTP 429" in str(refused.error)
    (next_at,) = [d[2] for d in deliveries(w).values() if d[0] == 1]
    assert next_at >= datetime.now(UTC) + timedelta(seconds=110)  # not our 1-2 s: the receiver's 120 s
    assert all(d[2] == next_at for d in deliveries(w).values())  # the alerts not tried wait with it
    waiting = tick(instance, defs)
    assert waiting.error is None and f"next attempt after {next_at:%H:%M:%S} UTC" in waiting.skip_message
    assert len(receiver.requests) == 1


def test_ticks_racing_send_each_alert_once(alerting, receiver, instance):
    w = alerting
    receiver.delay = 0.3  # every answer takes a while: the ticks overlap while sending
    receiver.start()
    due = current_alerts(w)
    defs = definitions()
    start = threading.Barrier(4)
    ticks: list[Tick] = []

    def run() -> None:
        start.wait()
        ticks.append(tick(instance, defs))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(t.error is None for t in ticks)
    assert sorted(accepted_ids(receiver)) == sorted(due)  # each once, none twice
    assert len(receiver.requests) == len(due)
    assert sum(int(t.skip_message.split()[1]) for t in ticks) == len(due)


def test_no_secret_in_logs_skip_messages_errors_run_requests_or_the_warehouse(
    alerting, receiver, instance, tmp_path, caplog
):
    w = alerting
    caplog.set_level(logging.DEBUG)
    ticks = [tick(instance)]  # down
    receiver.answers = [401, 404, 500]  # refusing, and echoing the URL with its token
    receiver.start()
    deadline = time.monotonic() + 60
    while set(current_alerts(w)) - set(accepted_ids(receiver)) and time.monotonic() < deadline:
        ticks.append(tick(instance))
        time.sleep(0.5)
    assert sorted(accepted_ids(receiver)) == sorted(current_alerts(w))
    errors = [str(t.error) for t in ticks if t.error]
    assert any("HTTP 401" in e for e in errors) and any("HTTP 404" in e for e in errors)
    assert any("invalid_token for ***" in e for e in errors)  # the receiver's words, token redacted

    secrets = [receiver.url, HOOK_PATH, HOOK_QUERY, "T0SECRET1", "B0SECRET2", "xoxwebhooktoken4711", "q-s3cret-0815"]
    sandbox = w.sandbox.env()
    secrets += [sandbox[n] for n in ("ONLYTRAFFIC_MARKETER_API_KEY", "ONLYTRAFFIC_STUDIO_API_KEY", "CPAMOE_API_KEY",
                                     "METAPIC_ACCESS_TOKEN")]
    said = [text for t in ticks for text in t.texts()] + [r.getMessage() for r in caplog.records]
    said += [str(row) for row in w.query("SELECT * FROM alert_deliveries")]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "dagster_home").rglob("*") if p.is_file())
    for secret in secrets:
        assert not [text for text in said if secret in text], secret
        assert secret.encode() not in stored, secret
    assert any(f"127.0.0.1:{receiver.port}/…" in text for text in said)  # the receiver is named, by host


def test_unset_no_sensor_and_a_tick_without_the_variable_skips_saying_so(world, receiver, instance, monkeypatch):
    assert "alerts_webhook" not in {s.name for s in definitions().get_repository_def().sensor_defs}

    monkeypatch.setenv("ALERTS_WEBHOOK_URL", receiver.url)
    defs = definitions()
    assert defs.get_repository_def().get_sensor_def("alerts_webhook").default_status == dg.DefaultSensorStatus.RUNNING

    monkeypatch.delenv("ALERTS_WEBHOOK_URL")  # gone from the environment after the load
    assert tick(instance, defs).skip_message.startswith("ALERTS_WEBHOOK_URL is not set")

    monkeypatch.setenv("ALERTS_WEBHOOK_URL", "ftp://hooks.example.com/T0SECRET1")  # malformed: named, not shown
    bad = tick(instance, defs)
    assert "ALERTS_WEBHOOK_URL=(hidden) is not an http:// or https:// URL" in str(bad.error)
    assert config_problems({"ALERTS_WEBHOOK_URL": "ftp://hooks.example.com/T0SECRET1"}) == [
        "ALERTS_WEBHOOK_URL=(hidden) is not an http:// or https:// URL (e.g. https://api.example.com)"
    ]
    assert not any("T0SECRET1" in text for text in bad.texts())


def test_before_any_sync_a_tick_skips_and_creates_no_warehouse(tmp_path, receiver, instance, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "never" / "warehouse.duckdb"))
    monkeypatch.setenv("ALERTS_WEBHOOK_URL", receiver.start().url)
    t = tick(instance)
    assert t.error is None and "v_order_alerts does not exist yet" in t.skip_message
    assert not Path(tmp_path / "never" / "warehouse.duckdb").exists() and receiver.requests == []


DAEMON_TICK_SECONDS = 5  # ALERTS_INTERVAL_SECONDS of the daemon test (30 by default)


@pytest.mark.ui
def test_the_daemon_delivers_each_alert_once_and_stores_no_secret(alerting, receiver, tmp_path):
    """The real route: ``dagster-daemon`` on this code location ticks the sensor (every 5 s here); the
    receiver refuses the first request (503), a later tick delivers. Ticks, their skip and failure
    messages and the sensor's logs are stored in the Dagster home: no secret there either."""
    w = alerting
    due = current_alerts(w)
    receiver.answers = [503]
    receiver.start()
    home = tmp_path / "daemon_home"
    home.mkdir()  # the default instance: this test launches no run
    env = clean_env(
        **w.env(), DAGSTER_HOME=str(home), ALERTS_WEBHOOK_URL=receiver.url, ALERTS_RETRY_BASE_SECONDS="1",
        ALERTS_INTERVAL_SECONDS=str(DAEMON_TICK_SECONDS),
        CPAMOE_LEADS_DIR=str(tmp_path / "no_leads"), SCHEDULES_DEFAULT_STATUS="stopped",
        AUTOMATION_DEFAULT_STATUS="stopped", DAGSTER_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while sorted(accepted_ids(receiver)) != sorted(due) and time.monotonic() < deadline:
                assert daemon.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            time.sleep(DAEMON_TICK_SECONDS + 10)  # one more tick: nothing more is sent
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(60)

    assert sorted(accepted_ids(receiver)) == sorted(due), log.read_text()[-3000:]
    assert [r["status"] for r in receiver.requests] == [503] + [200] * len(due)
    stored = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file()) + log.read_bytes()
    assert b"HTTP 503: invalid_token for *** from the alerts webhook http://127.0.0.1:" in stored  # the failed tick
    # and the ticks after it (the one that delivered may be lost if the daemon restarts its code
    # server mid-tick, as on a loaded machine: the alerts are recorded as delivered all the same)
    assert b" alerts to the alerts webhook http://127.0.0.1:" in stored
    secrets = [HOOK_PATH, HOOK_QUERY, "T0SECRET1", "B0SECRET2", "xoxwebhooktoken4711", "q-s3cret-0815"]
    secrets += [w.sandbox.env()[n] for n in ("ONLYTRAFFIC_MARKETER_API_KEY", "ONLYTRAFFIC_STUDIO_API_KEY",
                                             "CPAMOE_API_KEY", "METAPIC_ACCESS_TOKEN")]
    for secret in secrets:
        assert secret.encode() not in stored, secret
