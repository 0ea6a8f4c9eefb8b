#!/bin/sh
# One-shot: create the stack's buckets and the services' own access key (not the root user),
# with a policy that reaches only those buckets. Idempotent: rerunning it changes nothing but
# the key's secret (rotation: change WALLWM_S3_SECRET_KEY and rerun).
# Credentials reach mc through MC_HOST_<alias>, never on a command line (visible in ps).
set -eu

: "${MINIO_URL:?set MINIO_URL, e.g. http://minio:9000}"
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (the MinIO root user)}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
: "${WALLWM_S3_ACCESS_KEY:?set WALLWM_S3_ACCESS_KEY (the services key to create)}"
: "${WALLWM_S3_SECRET_KEY:?set WALLWM_S3_SECRET_KEY (at least 8 characters)}"
BUCKETS="${WALLWM_BUCKETS:-mlflow-artifacts wallwm-dvc wallwm-releases wallwm-fleet-inbox}"
POLICY=wallwm-services
export MC_CONFIG_DIR="${MC_CONFIG_DIR:-/tmp/.mc}"

scheme="${MINIO_URL%%://*}"
hostport="${MINIO_URL#*://}"
export MC_HOST_stack="${scheme}://${MINIO_ROOT_USER}:${MINIO_ROOT_PASSWORD}@${hostport}"

tries=0
until mc ready stack >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "init-buckets: MinIO at $MINIO_URL not ready after 120 s" >&2
    exit 1
  fi
  sleep 2
done

resources=""
for b in $BUCKETS; do
  mc mb --ignore-existing "stack/$b"
  resources="$resources\"arn:aws:s3:::$b\",\"arn:aws:s3:::$b/*\","
done
resources="${resources%,}"

policy_file="$(mktemp)"
trap 'rm -f "$policy_file"' EXIT
cat > "$policy_file" <<EOF
{"Version": "2012-10-17",
 "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [$resources]}]}
EOF
mc admin policy create stack "$POLICY" "$policy_file"

# `user add` on an existing user sets its secret; keep the secret out of argv by using stdin.
printf '%s\n%s\n' "$WALLWM_S3_ACCESS_KEY" "$WALLWM_S3_SECRET_KEY" | mc admin user add stack
if ! mc admin user info stack "$WALLWM_S3_ACCESS_KEY" | grep -q "$POLICY"; then
  mc admin policy attach stack "$POLICY" --user "$WALLWM_S3_ACCESS_KEY"
fi
echo "init-buckets: buckets [$BUCKETS] ready; key $WALLWM_S3_ACCESS_KEY has policy $POLICY"
