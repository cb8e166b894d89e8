#!/bin/sh
# Runs inside the image build after the Python packages are installed (bentofile docker.setup_script).
# BentoML's generated Dockerfile installs compilers, git and uv to build the environment; serving
# needs none of them. With `podman build --squash` (deploy/container.py) they leave the image;
# with other builders this layer only records the removal.
set -eu
# gcc ends up marked manual, and apt keeps what pip's Recommends name: both need saying
apt-get purge -y -q --auto-remove -o APT::AutoRemove::RecommendsImportant=false \
  build-essential gcc g++ make dpkg-dev git gnupg2 >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
if command -v pip >/dev/null 2>&1; then pip uninstall -y -q uv; fi
