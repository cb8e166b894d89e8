"""Durable jobs (issue 23): `Prefer: respond-async` on the image endpoints, /jobs routes, webhooks.

Data flow:
  POST /upscale + Prefer: respond-async -> middleware (auth, type, size, multipart) -> submit.py
  (validate like the sync API, resolve the model, pixel limits; no time limit) -> uploads written
  atomically under GANFORGE_JOBS_DIR/inputs/<id>/ -> a `queued` row + event in the store -> 202.
  Each worker's runner.py claims the oldest job (a lease, in one transaction), runs the sync API's
  handler on the stored upload under a `JobToken` (token.py: progress, cancel, yielding to sync
  requests at every tile), writes results/<id> atomically, and records the end; every status change
  appends an event (events.py streams them) and, when asked, a webhook delivery (webhooks.py).

A `video` or an `archive` upload (intake.py: probed / listed at submit) is always a job, of kind `video`
or `batch` (media.py): each frame or image through the same pipeline, progress in frames or images.

Modules: record (the Job), store (the interface), sqlite (the embedded store) and postgres + pgschema
(the store replicas share, GANFORGE_JOBS_DB), files, token,
runner, submit, intake, media, routes, events, webhooks, metrics, layer (one worker's parts together).
"""

from .layer import JobLayer
from .routes import routes
from .submit import prefers_async, submit
from .token import PRIORITY

__all__ = ["JobLayer", "PRIORITY", "prefers_async", "routes", "submit"]
