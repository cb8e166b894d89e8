"""Build the service image from the Bento: `make container` / `make container-gpu` call this.

  python deploy/container.py build [--variant cpu|gpu] [--models DIR] [--image NAME]
                                   [--base-image IMAGE] [--ca-bundle FILE] [--engine docker|podman]
  python deploy/container.py preflight [--engine ...]   # can this machine build and run containers?
  python deploy/container.py requirements [--check]     # rewrite (or check) deploy/requirements-*.txt

Steps: pick the engine (a docker whose daemon answers, else podman); pick the base
image (--base-image; else BentoML's default `python:3.N-slim` when a registry
answers; else `localhost/ganforge-base:bookworm`, made here from Debian packages
with debootstrap, see ../shared/CONTAINERS.md); stage a build context (service/,
the model folders, the variant's bentofile with the base image written in);
`bentoml build`; `bentoml containerize`. The image is tagged NAME:<bento version>
and NAME:latest, and its size is printed.

Requirements: pyproject.toml's [project] dependencies are the only place the serving
versions are written. Each image installs them with the onnxruntime build it needs
(`onnxruntime` on the CPU, `onnxruntime-gpu[cuda,cudnn]` on CUDA), from
deploy/requirements-<variant>.txt, which the bentofiles name (`python.requirements_txt`,
so a plain `bentoml build` reads them too); a test fails when they are stale, and `build`
stages them freshly derived.

--ca-bundle FILE: a CA bundle (e.g. a TLS-intercepting proxy's) that pip/uv inside the
build must trust. podman mounts it over the image's bundle for the build only; docker
cannot mount into a build, so there it is added to a thin base image layer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"
BENTOFILES = {"cpu": "bentofile.yaml", "gpu": "bentofile.gpu.yaml"}
IMAGE_NAMES = {"cpu": "ganforge", "gpu": "ganforge-gpu"}
PYPROJECT = REPO / "pyproject.toml"
REQUIREMENTS = {"cpu": "deploy/requirements-cpu.txt", "gpu": "deploy/requirements-gpu.txt"}
# pyproject.toml names onnxruntime-gpu (it runs on the CPU too); each image takes its own build of the same version
PYPROJECT_ONNXRUNTIME = "onnxruntime-gpu"
ONNXRUNTIME_BUILDS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu[cuda,cudnn]"}
LOCAL_BASE = "localhost/ganforge-base:bookworm"
# BentoML's own default: the building interpreter's Python version, slim Debian
BENTOML_BASE = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
IMAGE_CA = "/etc/ssl/certs/ca-certificates.crt"  # where Debian-family images keep the bundle
# as Debian's own slim images: no docs, manuals or translations from packages installed later
SLIM_DPKG = "".join(f"path-exclude /usr/share/{d}/*\n" for d in ("doc", "man", "locale")) + \
    "path-include /usr/share/doc/*/copyright\n"
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The Debian release whose python3 matches the Python BentoML writes into the Dockerfile
# (the building interpreter's): bookworm has 3.11, trixie 3.13.
DEBIAN_SUITES = {(3, 11): "bookworm", (3, 13): "trixie"}


class ContainerError(RuntimeError):
    """This machine cannot build or run the image; the message says why."""


def _run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _tail(proc: subprocess.CompletedProcess, lines: int = 5) -> str:
    text = (proc.stdout or "") + "\n" + (proc.stderr or "")  # the error last
    return " | ".join([line for line in text.splitlines() if line.strip()][-lines:]) or f"exit code {proc.returncode}"


def requirements_text(variant: str, pyproject: Path = PYPROJECT) -> str:
    """The image's requirements.txt: pyproject.toml's [project] dependencies, onnxruntime as the variant's build."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = [re.match(r"[A-Za-z0-9._-]+", dependency).group(0) for dependency in dependencies]
    if PYPROJECT_ONNXRUNTIME not in names:
        raise ContainerError(f"{pyproject.name} names no {PYPROJECT_ONNXRUNTIME} dependency to build the image on")
    lines = [ONNXRUNTIME_BUILDS[variant] + dependency[len(name):] if name == PYPROJECT_ONNXRUNTIME else dependency
             for name, dependency in zip(names, dependencies)]
    return (f"# Generated from pyproject.toml's [project] dependencies by `python deploy/container.py requirements`:\n"
            f"# do not edit. The {variant} image ({BENTOFILES[variant]}).\n" + "\n".join(lines) + "\n")


def write_requirements(check: bool) -> int:
    """Rewrite deploy/requirements-*.txt from pyproject.toml; with `check`, exit status 1 when one is stale."""
    stale = [path for variant, path in REQUIREMENTS.items()
             if not (REPO / path).is_file() or (REPO / path).read_text() != requirements_text(variant)]
    if check:
        for path in stale:
            print(f"{path} is stale: run python deploy/container.py requirements", file=sys.stderr)
        return 1 if stale else 0
    for variant, path in REQUIREMENTS.items():
        (REPO / path).write_text(requirements_text(variant))
        print(f"wrote {path}")
    return 0


def find_engine(preferred: str | None = None) -> str:
    """`docker` when its daemon answers, else `podman`; ContainerError says why neither works."""
    reasons = []
    for name in [preferred] if preferred else ["docker", "podman"]:
        if not shutil.which(name):
            reasons.append(f"{name}: not installed")
            continue
        try:
            proc = _run([name, "info"], timeout=60)
        except subprocess.TimeoutExpired:
            reasons.append(f"{name} info: no answer in 60 s")
            continue
        if proc.returncode == 0:
            return name
        reasons.append(f"{name} info: {_tail(proc, 2)}")
    raise ContainerError("no container engine works here: " + "; ".join(reasons))


def image_exists(engine: str, image: str) -> bool:
    return _run([engine, "image", "inspect", image]).returncode == 0


def registry_reachable() -> bool:
    """Whether Docker Hub answers (an HTTP 401 from /v2/ is an answer)."""
    try:
        urllib.request.urlopen(REGISTRY_PROBE, timeout=5)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


def make_local_base(engine: str) -> str:
    """`localhost/ganforge-base:bookworm`: Debian minbase + python3 from the Debian mirror (root, ~1-2 min)."""
    if image_exists(engine, LOCAL_BASE):
        return LOCAL_BASE
    suite = DEBIAN_SUITES.get(sys.version_info[:2])
    if suite is None:
        raise ContainerError(f"no Debian release ships Python {sys.version_info.major}.{sys.version_info.minor} "
                             "as python3 here; pass --base-image")
    if not shutil.which("debootstrap") or os.geteuid() != 0:
        raise ContainerError("no registry answers, and making a base image needs root and debootstrap "
                             "(apt-get install debootstrap); or pass --base-image")
    print(f"no registry answers: making {LOCAL_BASE} from {DEBIAN_MIRROR} ({suite}) with debootstrap", flush=True)
    with tempfile.TemporaryDirectory(prefix="ganforge-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
                     suite, str(rootfs), DEBIAN_MIRROR], timeout=1200)
        if proc.returncode != 0:
            raise ContainerError(f"debootstrap failed: {_tail(proc)}")
        for cache in ("var/lib/apt/lists", "var/cache/apt", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        for doc in (rootfs / "usr/share/doc").rglob("*"):
            if doc.is_file() and doc.name != "copyright":  # the licences stay
                doc.unlink()
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        (rootfs / "etc/dpkg/dpkg.cfg.d/ganforge-slim").write_text(SLIM_DPKG)
        (rootfs / "etc/resolv.conf").write_text("")
        # BentoML's Dockerfile runs a bare `pip install uv` on this Python, and uv reads SSL_CERT_FILE
        changes = ["CMD [\"/bin/bash\"]", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", f"ENV SSL_CERT_FILE={IMAGE_CA}"]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        proc = subprocess.run([engine, "import", *(a for c in changes for a in ("--change", c)), "-", LOCAL_BASE],
                              stdin=tar.stdout, capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        if tar.wait() != 0 or proc.returncode != 0:
            raise ContainerError(f"{engine} import failed: {_tail(proc)}")
    return LOCAL_BASE


def with_ca_layer(engine: str, base: str, ca_bundle: Path) -> str:
    """docker only: `base` plus the CA bundle (no build-time mounts there)."""
    digest = hashlib.sha256(base.encode() + ca_bundle.read_bytes()).hexdigest()[:12]
    tag = f"localhost/ganforge-base-ca:{digest}"
    with tempfile.TemporaryDirectory(prefix="ganforge-ca-") as tmp:
        shutil.copy(ca_bundle, Path(tmp) / "ca.crt")
        (Path(tmp) / "Containerfile").write_text(
            f"FROM {base}\nCOPY ca.crt {IMAGE_CA}\nENV SSL_CERT_FILE={IMAGE_CA} PIP_CERT={IMAGE_CA}\n")
        proc = _run([engine, "build", "-t", tag, "-f", str(Path(tmp) / "Containerfile"), tmp], timeout=600)
    if proc.returncode != 0:
        raise ContainerError(f"{engine} build of the CA layer failed: {_tail(proc)}")
    return tag


def choose_base(engine: str, base_image: str | None) -> str | None:
    """The base image to write into the bentofile; None keeps BentoML's default."""
    if base_image:
        return base_image
    return None if registry_reachable() else make_local_base(engine)


def stage_context(ctx: Path, variant: str, models: Path, base: str | None) -> Path:
    """A build context holding what the Bento packs: service/, core/, contract/, models/, the bentofile and its setup
    script."""
    for package in ("service", "contract", "core"):
        shutil.copytree(REPO / package, ctx / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (ctx / "models").mkdir()
    if models.is_dir():
        for folder in sorted(models.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):  # .NAME.prev / staging folders
                shutil.copytree(folder, ctx / "models" / folder.name)
    (ctx / "deploy").mkdir()
    shutil.copy2(REPO / "deploy" / "slim.sh", ctx / "deploy" / "slim.sh")
    config = yaml.safe_load((REPO / BENTOFILES[variant]).read_text())
    (ctx / config["python"]["requirements_txt"]).write_text(requirements_text(variant))  # pyproject's pins, now
    if base:
        config.setdefault("docker", {})["base_image"] = base
    bentofile = ctx / "bentofile.yaml"
    bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
    return bentofile


def build(variant: str, models: Path, image: str | None, base_image: str | None, ca_bundle: Path | None,
          engine: str | None) -> str:
    engine = find_engine(engine)
    base = choose_base(engine, base_image)
    if ca_bundle and engine == "docker":
        base = with_ca_layer(engine, base or BENTOML_BASE, ca_bundle)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ganforge-bento-") as tmp:
        bentofile = stage_context(Path(tmp), variant, models, base)
        proc = _run([str(BENTOML), "build", tmp, "-f", str(bentofile), "--output", "tag"], timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bentoml build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    bento = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name = image or IMAGE_NAMES[variant]
    tags = [f"{name}:{bento.split(':', 1)[1]}", f"{name}:latest"]
    cmd = [str(BENTOML), "containerize", bento, "--backend", engine, *(a for t in tags for a in ("-t", t))]
    if engine == "podman":
        cmd += ["--opt", "squash"]  # with deploy/slim.sh: the build tools do not stay in a lower layer
        if ca_bundle:
            cmd += ["--opt", f"volume={ca_bundle.resolve()}:{IMAGE_CA}:ro"]
    print(f"{engine}: building {tags[0]} from Bento {bento} on base {base or 'BentoML default'}", flush=True)
    if subprocess.run(cmd, timeout=3000).returncode != 0:
        raise SystemExit(f"bentoml containerize {bento} failed")
    size = int(_run([engine, "image", "inspect", "--format", "{{.Size}}", tags[0]]).stdout.strip() or 0)
    print(json.dumps({"image": tags[0], "also": tags[1], "bento": bento, "engine": engine,
                      "size_mb": round(size / 1e6), "build_s": round(time.monotonic() - started)}))
    return tags[0]


def preflight(engine: str | None, base_image: str | None) -> str:
    """Engine found, base image at hand, and a container runs in it (the OCI runtime works)."""
    engine = find_engine(engine)
    base = choose_base(engine, base_image) or BENTOML_BASE
    proc = _run([engine, "run", "--rm", base, "true"], timeout=300)
    if proc.returncode != 0:
        raise ContainerError(f"{engine} cannot run a container here ({engine} run {base} true): {_tail(proc)}")
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "preflight", "requirements"])
    parser.add_argument("--variant", choices=sorted(BENTOFILES), default="cpu")
    parser.add_argument("--models", type=Path, default=REPO / "models", help="model folders to bake in [models/]")
    parser.add_argument("--image", help="image name [ganforge / ganforge-gpu]")
    parser.add_argument("--base-image", help="base image [BentoML's default, or a local Debian one offline]")
    parser.add_argument("--ca-bundle", type=Path, help="CA bundle pip/uv must trust during the build")
    parser.add_argument("--engine", choices=["docker", "podman"], help="[docker when its daemon answers, else podman]")
    parser.add_argument("--check", action="store_true", help="requirements: exit 1 when a committed file is stale")
    args = parser.parse_args(argv)
    try:
        if args.command == "requirements":
            return write_requirements(args.check)
        if args.command == "preflight":
            print(preflight(args.engine, args.base_image))
        else:
            if args.ca_bundle and not args.ca_bundle.is_file():
                parser.error(f"--ca-bundle {args.ca_bundle}: no such file")
            build(args.variant, args.models, args.image, args.base_image, args.ca_bundle, args.engine)
    except ContainerError as exc:
        print(f"container: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
