#!/usr/bin/env bash
# Start MLflow's tracking server for segssl: PostgreSQL backend store, an artifact root served
# over HTTP, and MLflow's basic-auth app (users and permissions in a second PostgreSQL database).
#
# Configuration, all from the environment (nothing secret on the command line or in a file in
# the repository; the generated auth config holds no password):
#   MLFLOW_BACKEND_STORE_URI        postgresql://USER@HOST:PORT/DB   (required; no password in it:
#                                   libpq reads PGPASSWORD or ~/.pgpass)
#   MLFLOW_AUTH_DATABASE_URI        the users/permissions database (default: the backend URI with
#                                   the database name suffixed "_auth")
#   MLFLOW_ARTIFACTS_DESTINATION    artifact root: a directory, s3://..., gs://... (required)
#   MLFLOW_AUTH_ADMIN_USERNAME      admin user created on first start (default: admin)
#   MLFLOW_AUTH_ADMIN_PASSWORD      its password (required on first start; ignored afterwards)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the UI's session cookies and CSRF tokens (required; the
#                                   same value on every restart and every server replica)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  READ (default) | EDIT | MANAGE | NO_PERMISSIONS
#   MLFLOW_AUTH_CACHE_TTL_SECONDS   cache verified credentials per worker this long (default 0:
#                                   off; 60 saves a PBKDF2 check per request, see basic_auth.ini)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's GenAI job runner (default here: false; segssl
#                                   does not use it and it starts eight processes)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2), MLFLOW_ALLOWED_HOSTS (*)
#   PGPASSWORD                      the PostgreSQL password of the backend user, if it has one
#
# Usage: cluster/scripts/mlflow-server.sh        (runs in the foreground; exec's mlflow server)
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER@HOST:PORT/DB}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (a directory or bucket URI)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. openssl rand -hex 32)}"
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql://*:*@*) echo "MLFLOW_BACKEND_STORE_URI carries a password; use PGPASSWORD or ~/.pgpass" >&2; exit 2 ;;
  postgresql://*) ;;
  *) echo "MLFLOW_BACKEND_STORE_URI must be postgresql://USER@HOST:PORT/DB" >&2; exit 2 ;;
esac
auth_db="${MLFLOW_AUTH_DATABASE_URI:-${MLFLOW_BACKEND_STORE_URI%%\?*}_auth}"
perm="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

conf_dir="$(mktemp -d "${TMPDIR:-/tmp}/segssl-mlflow-auth.XXXXXX")"
trap 'rm -rf "$conf_dir"' EXIT
cat > "$conf_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = $perm
database_uri = $auth_db
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-0}
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf_dir/basic_auth.ini"

# not exec: the trap removes the generated config when the server stops
mlflow server --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}" --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-*}" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; rm -rf "$conf_dir"' TERM INT
wait "$pid"
