"""Webhooks: which URLs a job may call, Standard Webhooks signatures, at-least-once delivery.

A request's `webhook` must be an http(s) URL whose host (or host:port) is listed in
GANFORGE_WEBHOOK_HOSTS, and GANFORGE_WEBHOOK_SECRET must be set; otherwise it is refused with 422
naming the variable: a client must not make the server call into the operator's network. Redirects
are never followed, for the same reason.

Deliveries are rows of the store's outbox, written in the same transaction as the status change
they report. Every worker runs a `Deliverer` thread that claims due rows (a claim is a short lease,
so a worker that dies mid-delivery only delays it) and POSTs them:

  webhook-id: <msg id, the same on every attempt>   webhook-timestamp: <unix seconds of this attempt>
  webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>   (key: base64 after whsec_)

A 2xx answer is delivered; an error or any other answer is tried again after `BACKOFF_S` (then
given up and counted as failed). Body: {"type": "job.start" | "job.progress" | "job.completed",
"timestamp": RFC 3339, "data": <the job>}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import unprocessable
from .metrics import JobTelemetry
from .record import WEBHOOK_EVENTS
from .store import JobStore

logger = logging.getLogger("bentoml.ganforge")

BACKOFF_S = (0.5, 2.0, 10.0, 60.0, 300.0, 1800.0, 7200.0)  # before attempts 2, 3, ...; then given up
CLAIM_S = 30.0  # a claimed delivery is retried by any worker if not settled by then
POLL_S = 0.25
TIMEOUT_S = 10.0


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def allowed_host(url: str, hosts: tuple[str, ...]) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return False
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError:
        return False
    return host in hosts or (port is not None and f"{host}:{port}" in hosts)


def check_webhook(url: object, events: object, settings: Settings) -> tuple[str | None, tuple[str, ...]]:
    """The request's `webhook` and `webhook_events`, validated (422 naming what to set or fix)."""
    if url is None or url == "":
        if events not in (None, "", []):
            raise unprocessable("webhook_events needs a webhook")
        return None, ()
    if not isinstance(url, str) or len(url) > 2000:
        raise unprocessable("webhook must be a URL")
    if not settings.webhook_hosts:
        raise unprocessable("webhooks are off on this server: no host is listed in GANFORGE_WEBHOOK_HOSTS")
    if not settings.webhook_secret:
        raise unprocessable("webhooks are off on this server: GANFORGE_WEBHOOK_SECRET is not set")
    if not allowed_host(url, settings.webhook_hosts):
        raise unprocessable("webhook must be an http(s) URL on a host listed in GANFORGE_WEBHOOK_HOSTS")
    if events in (None, "", []):
        chosen: list = ["completed"]
    elif isinstance(events, str):
        chosen = [e.strip() for e in events.split(",") if e.strip()]
    elif isinstance(events, list) and all(isinstance(e, str) for e in events):
        chosen = events
    else:
        raise unprocessable("webhook_events must be a list of: " + ", ".join(WEBHOOK_EVENTS))
    unknown = [e for e in chosen if e not in WEBHOOK_EVENTS]
    if unknown:
        raise unprocessable(f"unknown webhook_events {unknown[:3]}; use " + ", ".join(WEBHOOK_EVENTS))
    return url, tuple(e for e in WEBHOOK_EVENTS if e in chosen)


class Deliverer:
    """This worker's share of the webhook outbox."""

    def __init__(self, store: JobStore, settings: Settings, telemetry: JobTelemetry) -> None:
        self.store, self.secret, self.telemetry = store, settings.webhook_secret, telemetry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.secret is None:
            return
        self._thread = threading.Thread(target=self._loop, name="ganforge-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            while not self._stop.wait(POLL_S):
                try:
                    for delivery in self.store.due_deliveries(time.time(), CLAIM_S, 8):
                        self._deliver(client, delivery)
                except Exception:  # noqa: BLE001 - the next round tries again
                    logger.exception("webhooks: delivery round failed")

    def _deliver(self, client, delivery) -> None:
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": delivery.id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self.secret, delivery.id, timestamp, delivery.body)}
        try:
            answer = client.post(delivery.url, content=delivery.body.encode(), headers=headers)
            ok, why = 200 <= answer.status_code < 300, f"HTTP {answer.status_code}"
        except Exception as exc:  # noqa: BLE001 - httpx's errors, and a bad URL
            ok, why = False, type(exc).__name__
        if ok:
            self.store.delivered(delivery.id)
            self.telemetry.delivery("delivered")
            return
        attempt = delivery.attempts  # attempts before this one
        if attempt < len(BACKOFF_S):
            self.store.retry_delivery(delivery.id, time.time() + BACKOFF_S[attempt])
            self.telemetry.delivery("retry")
            logger.warning("webhook %s for job %s: %s; retry in %g s", delivery.id, delivery.job_id, why,
                           BACKOFF_S[attempt])
        else:
            self.store.retry_delivery(delivery.id, None)
            self.telemetry.delivery("failed")
            logger.error("webhook %s for job %s: %s; given up after %d attempts", delivery.id, delivery.job_id,
                         why, attempt + 1)

