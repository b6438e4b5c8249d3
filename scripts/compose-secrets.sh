#!/bin/sh
# Makes the key files docker-compose.yml hands to the managers as secrets: 32 random bytes each,
# mode 600, one per manager (m1.key ... m5.key), and the unlock key docker-compose.autolock.yml
# uses (unlock.key, 32 random bytes too), in DIR (default: secrets, beside the compose file). An
# existing file is never overwritten: a manager's data cannot be opened without it.
#
#   sh scripts/compose-secrets.sh [DIR] [COUNT]
#
# The managers run as uid 1000 (the image's node user); if yours differs, give the files to it:
#   sudo chown 1000:1000 DIR/*.key
set -eu
dir="${1:-secrets}"
count="${2:-5}"
umask 077
mkdir -p "$dir"
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
  i=$((i + 1))
done
