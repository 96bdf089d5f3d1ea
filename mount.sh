#!/usr/bin/env bash
# Set up (Debian packages and .venv, when missing) and mount ubcfs:
#
#   bash mount.sh [MOUNTPOINT] [ubcfs mount options]
#
# MOUNTPOINT defaults to ./mnt (created if missing); the store defaults to the embedded one,
# ${XDG_DATA_HOME:-~/.local/share}/ubcfs/store, unless --backing DIR is given.  Returns once
# the mount serves requests.  Unmount with: .venv/bin/ubcfs umount MOUNTPOINT
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$top/scripts/setup.sh"
mnt=./mnt
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    mnt=$1
    shift
fi
if [ "$mnt" = ./mnt ] && [ ! -e "$mnt" ]; then
    mkdir -p "$mnt"
fi
exec "$top/.venv/bin/ubcfs" mount "$mnt" "$@"
