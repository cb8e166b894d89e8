"""`ganforge`: the command-line client for people with folders of images and videos.

It walks a folder, submits each file to a ganforge server as a job (`Prefer: respond-async`), shows progress
per file and in total, and writes each result to the same relative path under the output folder. It needs
httpx and tqdm only: nothing of the server (no bentoml, no torch, no onnxruntime), and imports nothing else
of this project, so it installs anywhere.

- files.py  what to send where: the walk, the mirrored output names, the idempotency key, atomic writes
- api.py    the job API over HTTP: submit (retrying 429 / 503 / connection errors), poll, download
- run.py    many files at once (a thread per job slot), the progress bars, the failure list
- __main__.py  the command line
"""
