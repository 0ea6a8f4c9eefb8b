#!/bin/bash
# Runs once, when the official postgres image initializes an empty data directory
# (/docker-entrypoint-initdb.d): one role and database per service, so a leaked MLflow
# password does not open Prefect's database. MLflow keeps its basic-auth users in a second
# database. Used by both infra/compose (mounted) and infra/k8s (a generated ConfigMap).
# Passwords arrive as psql variables (:'name' quotes them), never spliced into SQL text.
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, prefect FROM PUBLIC;
SQL
