#!/bin/sh
# Makes the key files docker-compose.yml hands to the managers as secrets: 32 random bytes each,
# mode 600, one per manager (m1.key ... m5.key), and the unlock key docker-compose.autolock.yml
# uses (unlock.key, 32 random bytes too), in DIR (default: secrets, beside the compose file). An
# existing file is never overwritten: a manager's data cannot be opened without it.
#
#   sh scripts/compose-secrets.sh [DIR] [COUNT]
#
# Compose (without swarm) bind-mounts a secret's file: the container sees the owner and mode the
# file has on this host. The managers run as uid 1000 (the image's node user), and coffer refuses
# a key file that others may read, so every file must belong to uid 1000, mode 600. Run as root,
# the script gives them to uid 1000; run as uid 1000, they are already its own; run as anyone
# else, it cannot, so it says so, prints the command that does, and exits 1: before `docker
# compose up`, not after. Every run checks every file, new or kept, and tightens a loose mode.
set -eu
dir="${1:-secrets}"
count="${2:-5}"
# The image's USER (cluster/Dockerfile): node, uid and gid 1000 in node:20-slim.
container_uid=1000
container_gid=1000
umask 077
mkdir -p "$dir"
me="$(id -u)"
if [ ! -w "$dir" ] || [ ! -x "$dir" ]; then
  echo "compose-secrets.sh: cannot write in $dir (uid $me): run it as the user who made $dir, or as root" >&2
  exit 1
fi

# A path as a shell word for the commands printed below.
quote() {
  case "$1" in
    *[!A-Za-z0-9_./-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
  esac
}

to_chown=""
to_chmod=""
i=1
while [ "$i" -le "$((count + 1))" ]; do
  file="$dir/m$i.key"
  if [ "$i" -gt "$count" ]; then file="$dir/unlock.key"; fi
  if [ -e "$file" ]; then
    echo "$file exists: kept as it is"
  else
    head -c 32 /dev/urandom > "$file.tmp"
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
    echo "$file written"
  fi
  if [ "$me" -eq 0 ]; then chown "$container_uid:$container_gid" "$file"; fi
  # What a container will see: the numeric owner and the mode (ls -ln reads the same on Linux and BSD).
  owner="$(ls -ln "$file" | awk '{ print $3 }')"
  case "$(ls -ln "$file")" in
    -r[w-]-------*) ;;
    *)
      if [ "$me" -eq 0 ] || [ "$owner" = "$me" ]; then
        chmod 600 "$file"
        echo "$file could be read by others: now mode 600"
      else
        to_chmod="$to_chmod $(quote "$file")"
      fi
      ;;
  esac
  if [ "$owner" != "$container_uid" ]; then to_chown="$to_chown $(quote "$file")"; fi
  i=$((i + 1))
done

if [ -z "$to_chown" ] && [ -z "$to_chmod" ]; then
  echo "key files ready: owned by uid $container_uid (the managers' user), mode 600"
  exit 0
fi
{
  echo
  echo "!!! STOP: the managers cannot read these key files. Fix them before docker compose up. !!!"
  echo "The managers run as uid $container_uid, and compose mounts a secret with the owner and mode it"
  echo "has on this host (you are uid $me). Run:"
  echo
  if [ -n "$to_chown" ]; then echo "  sudo chown $container_uid:$container_gid$to_chown"; fi
  if [ -n "$to_chmod" ]; then echo "  sudo chmod 600$to_chmod"; fi
  echo
  echo "(or run this script as root: it gives the files to uid $container_uid itself). Then run it"
  echo "again: it checks every file and says when they are ready."
} >&2
exit 1
