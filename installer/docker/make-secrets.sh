#!/usr/bin/env bash
# Random secrets for compose.yaml, written once into ./secrets/ beside this script (an existing file is
# kept): postgres_password (PostgreSQL's, a compose secret), hilum.env (what the nodes read: PGPASSWORD,
# HILUM_S3_KEY, HILUM_S3_SECRET) and minio.env (MinIO's root user: the same S3 keys).  Keep the folder out
# of version control and backups of the host; rotate by changing all three consistently.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077
mkdir -p secrets
rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
if [[ ! -e secrets/postgres_password ]]; then
  pg="$(rand)" key="hilum$(rand | head -c 12)" secret="$(rand)"
  printf '%s\n' "$pg" > secrets/postgres_password
  printf 'PGPASSWORD=%s\nHILUM_S3_KEY=%s\nHILUM_S3_SECRET=%s\n' "$pg" "$key" "$secret" > secrets/hilum.env
  printf 'MINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n' "$key" "$secret" > secrets/minio.env
  # The secret files are bind-mounted into containers that run as other users: readable, not world-writable.
  chmod 0644 secrets/postgres_password secrets/hilum.env secrets/minio.env
  echo "secrets written to $(pwd)/secrets"
else
  echo "secrets exist in $(pwd)/secrets: kept"
fi
