#!/usr/bin/env bash
# `make container-engine`: a container engine for `make container` / `make container-test`.
# Nothing to do when docker's daemon or podman answers. Otherwise, as root with apt-get:
# podman + runc + debootstrap (~15 s), and /etc/containers/containers.conf when there is none,
# with what ../shared/CONTAINERS.md measured: runc (crun refuses hybrid cgroups) and ulimits
# within this machine's hard limits (podman's defaults exceed them without CAP_SYS_RESOURCE).
# Never fails: where it cannot install, it says why and tests/deploy/test_container.py skips, saying so.
set -u
if { command -v docker >/dev/null && docker info >/dev/null 2>&1; } ||
   { command -v podman >/dev/null && podman info >/dev/null 2>&1 && command -v debootstrap >/dev/null; }; then
  exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "make container-engine: no working docker or podman, and no root apt-get to install podman" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq &&
       apt-get install -y -qq podman buildah uidmap slirp4netns fuse-overlayfs debootstrap >/dev/null &&
       apt-get install -y -qq --no-install-recommends runc >/dev/null; }; then
  echo "make container-engine: apt-get install podman runc debootstrap failed" >&2
  exit 0
fi
conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  [ "$nofile" = unlimited ] && nofile=1048576
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" > "$conf"
  echo "make container-engine: wrote $conf (runc, nofile=$nofile, nproc=$nproc)"
fi
