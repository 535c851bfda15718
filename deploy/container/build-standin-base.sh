#!/usr/bin/env bash
# Build a stand-in for the python:3.11-slim-bookworm base image where base images cannot be
# pulled: a Debian bookworm root filesystem (debootstrap, minbase) with Debian's Python 3.11 and
# venv, laid out where the Dockerfile looks — `python3` on PATH, /usr/local/bin/python3 as in the
# official image, `python3 -m venv` with pip, groupadd/useradd, CA certificates — and slimmed like
# the official image (no apt lists, docs, man pages or locales).
#
# Usage: build-standin-base.sh TARBALL
#   Writes TARBALL (a tar of the root filesystem, for `podman import`) unless it exists already.
#   The Debian mirror is DEBIAN_MIRROR, else the one the host's apt uses for bookworm.
# Needs root and debootstrap. Takes a minute or two; the tarball is the cache.
set -euo pipefail

tarball="${1:?usage: build-standin-base.sh TARBALL}"
[[ -s $tarball ]] && { echo "stand-in base: using cached $tarball" >&2; exit 0; }

[[ $(id -u) -eq 0 ]] || { echo "stand-in base: debootstrap needs root" >&2; exit 3; }
command -v debootstrap >/dev/null || { echo "stand-in base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 3; }

# shellcheck disable=SC2016  # $(REPO_URI) is apt's format placeholder, not a substitution
mirror="${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Identifier: Packages' 2>/dev/null | sort -u | head -n 1)}"
[[ -n $mirror ]] || { echo "stand-in base: no bookworm mirror in the host's apt sources; set DEBIAN_MIRROR" >&2; exit 3; }

work="$(mktemp -d "$(dirname "$tarball")/standin.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "stand-in base: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }

# The official image's interpreter paths.
ln -s /usr/bin/python3.11 "$rootfs/usr/local/bin/python3.11"
ln -s python3.11 "$rootfs/usr/local/bin/python3"
ln -s python3 "$rootfs/usr/local/bin/python"

# Slim it like the official image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/tmp/* "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

tar --numeric-owner --xattrs -C "$rootfs" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "stand-in base: wrote $tarball ($(du -h "$tarball" | cut -f1))" >&2
