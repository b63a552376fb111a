#!/usr/bin/env bash
# Create the PostgreSQL role and the two databases segssl's MLflow server uses (runs and
# users/permissions), on an existing PostgreSQL server you can reach as a superuser.
#
#   PGHOST, PGPORT, PGUSER (a superuser)  where to connect (libpq's variables; PGPASSWORD too)
#   MLFLOW_DB_USER (mlflow), MLFLOW_DB_NAME (mlflow)     the role and database to create
#   MLFLOW_DB_PASSWORD                   the role's password (omit for peer/trust setups)
#
# Idempotent: existing role/databases are kept (the password is updated when given).
# Then: MLFLOW_BACKEND_STORE_URI=postgresql://$MLFLOW_DB_USER@$PGHOST:$PGPORT/$MLFLOW_DB_NAME
#       PGPASSWORD=$MLFLOW_DB_PASSWORD cluster/scripts/mlflow-server.sh
set -euo pipefail
user="${MLFLOW_DB_USER:-mlflow}"
db="${MLFLOW_DB_NAME:-mlflow}"
psql_() { psql -v ON_ERROR_STOP=1 -qAt -d postgres "$@"; }
if [ -z "$(psql_ -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" ]; then
  psql_ -c "CREATE ROLE \"$user\" LOGIN"
fi
if [ -n "${MLFLOW_DB_PASSWORD:-}" ]; then
  # the password reaches psql through its environment (\getenv), never a command line
  export MLFLOW_DB_PASSWORD
  psql_ -v user="$user" <<'SQL'
\getenv pw MLFLOW_DB_PASSWORD
ALTER ROLE :"user" PASSWORD :'pw';
SQL
fi
for name in "$db" "${db}_auth"; do
  if [ -z "$(psql_ -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
    psql_ -c "CREATE DATABASE \"$name\" OWNER \"$user\""
  fi
done
echo "role $user, databases $db and ${db}_auth ready on ${PGHOST:-local}:${PGPORT:-5432}"
