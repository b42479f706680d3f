#!/bin/sh
# Build a Python 3.11 base image from Debian packages alone, for hosts that cannot pull from Docker Hub.
#
#   sudo deploy/debian-python-base.sh [TAG] [MIRROR]
#   docker build -f deploy/Dockerfile --build-arg BASE_IMAGE=flavorkit-local/python:3.11-bookworm ...
#
# It debootstraps a minimal Debian bookworm (python3 3.11, python3-venv, ca-certificates) from MIRROR and
# imports it with `docker import`: the stand-in for python:3.11-slim that deploy/Dockerfile needs (a
# `python3` that can make a venv, and `useradd`). Needs root, debootstrap and a running Docker daemon.
set -eu
TAG="${1:-flavorkit-local/python:3.11-bookworm}"
MIRROR="${2:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d)"
trap 'rm -rf --one-file-system "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR"
# What an image does not need: package caches, documentation, manual pages.
rm -rf --one-file-system "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase bookworm from $MIRROR" \
    - "$TAG"
echo "$TAG"
