#!/usr/bin/env bash
# Verify the systemd units offline: `systemd-analyze verify` must print nothing at all (it exits
# 0 on unknown keys and bad values, so any output fails the check), and the exposure score of
# `systemd-analyze security --offline=yes` must stay at or below MAX_EXPOSURE.
#
# The units are checked inside a scratch root holding a copy of the host's unit tree, a stub of
# the daemon at its ExecStart path and /bin/kill (ExecReload), so the check needs neither a
# booted systemd nor an installed daemon. The template is checked as an instance, and the
# single unit also with the environment-file drop-in applied.
#
# Usage: deploy/systemd/check-units.sh            (exit 0 clean, 1 a finding)
set -euo pipefail

MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze is not installed" >&2; exit 1; }
host_units=/usr/lib/systemd/system
[[ -d $host_units ]] || host_units=/lib/systemd/system

mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/opt/flowcraft-puller/bin" "$root/bin"
cp -a "$host_units" "$root/usr/lib/systemd/system"
printf '#!/bin/sh\nexit 0\n' >"$root/opt/flowcraft-puller/bin/flowcraft-puller"
chmod 0755 "$root/opt/flowcraft-puller/bin/flowcraft-puller"
cp /bin/kill "$root/bin/kill"

failed=0

verify() {  # verify UNIT LABEL
    local out
    if ! out="$(systemd-analyze verify --man=no --generators=no --root="$root" "$1" 2>&1)" || [[ -n $out ]]; then
        echo "FAIL verify $2:" >&2
        printf '%s\n' "${out:-(non-zero exit, no output)}" >&2
        failed=1
    else
        echo "ok   verify $2"
    fi
}

security() {  # security UNIT LABEL
    local out score
    out="$(systemd-analyze security --offline=yes --no-pager --root="$root" "$1" 2>&1)" || true
    score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")"
    if [[ -z $score ]]; then
        echo "FAIL security $2: no exposure level in the output:" >&2
        printf '%s\n' "$out" >&2
        failed=1
    elif awk -v s="$score" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(s > max) }'; then
        echo "FAIL security $2: exposure $score > $MAX_EXPOSURE" >&2
        grep '✗' <<<"$out" >&2 || true
        failed=1
    else
        echo "ok   security $2: exposure $score (at most $MAX_EXPOSURE)"
    fi
}

cp "$here/flowcraft-puller.service" "$here/flowcraft-puller@.service" "$root/etc/systemd/system/"
for unit in flowcraft-puller.service flowcraft-puller@example.service; do
    verify "$unit" "$unit"
    security "$unit" "$unit"
done

mkdir -p "$root/etc/systemd/system/flowcraft-puller.service.d"
cp "$here/secrets-from-environment-file.conf" "$root/etc/systemd/system/flowcraft-puller.service.d/"
verify flowcraft-puller.service "flowcraft-puller.service + secrets-from-environment-file.conf"
security flowcraft-puller.service "flowcraft-puller.service + secrets-from-environment-file.conf"

exit "$failed"
