#!/bin/sh
# quarry-run-as-owner OWNER_DIR WRITE_DIR COMMAND [ARG...]
#
# Runs COMMAND as the owner of OWNER_DIR, after giving WRITE_DIR to that
# owner. The compose `run` service starts as root with this in front of its
# command: OWNER_DIR is a directory of the project bind-mounted read-only
# (./data), so the reports it writes into WRITE_DIR (./output) belong to
# whoever owns the checkout, with no ids to export. QUARRY_UID / QUARRY_GID
# override the owner; a root-owned OWNER_DIR (a checkout made as root, or a
# file-sharing layer that reports root) falls back to the image's user.
set -eu
if [ "$#" -lt 3 ]; then
    echo "usage: quarry-run-as-owner OWNER_DIR WRITE_DIR COMMAND [ARG...]" >&2
    exit 64
fi
owner_dir=$1
write_dir=$2
shift 2
uid=${QUARRY_UID:-$(stat -c %u "$owner_dir")}
gid=${QUARRY_GID:-$(stat -c %g "$owner_dir")}
if [ "$uid" = 0 ]; then
    uid=10001
    gid=10001
fi
mkdir -p "$write_dir"
chown "$uid:$gid" "$write_dir"
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
