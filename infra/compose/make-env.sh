#!/usr/bin/env bash
# Write infra/compose/.env from .env.example with a fresh random value (48 hex digits) for
# every secret left empty there; settings keep their example values. The file is created
# 0600 under a temporary name and renamed, and an existing .env is never overwritten (it
# holds the passwords the databases were initialized with).
# Usage: infra/compose/make-env.sh [OUTPUT]   (default: infra/compose/.env)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
example="$here/.env.example"
out="${1:-$here/.env}"

if [ -e "$out" ]; then
  echo "make-env: $out exists; it holds the secrets the stack was started with." >&2
  echo "make-env: edit it by hand, or move it away first to make new secrets." >&2
  exit 1
fi

random_hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 24
  else
    python3 -c 'import secrets; print(secrets.token_hex(24))'
  fi
}

umask 077
tmp="$(mktemp "$(dirname "$out")/.env.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
filled=0
while IFS= read -r line || [ -n "$line" ]; do
  if [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=$ ]]; then
    printf '%s=%s\n' "${BASH_REMATCH[1]}" "$(random_hex)" >> "$tmp"
    filled=$((filled + 1))
  else
    printf '%s\n' "$line" >> "$tmp"
  fi
done < "$example"
mv "$tmp" "$out"
trap - EXIT
echo "make-env: wrote $out with $filled new secrets (mode 0600); keep it out of git"
