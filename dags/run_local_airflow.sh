#!/usr/bin/env bash
# Local Airflow for mmcompress (`make airflow`): api-server, scheduler, dag-processor and triggerer
# with SQLite + LocalExecutor, every listener on 127.0.0.1, all stopped together on Ctrl-C.
# State lives in <repo>/airflow_home (git-ignored); the DAGs are read from <repo>/dags.
# Environment knobs: AIRFLOW_HOME, AIRFLOW_PORT (default 8080), AIRFLOW_API_HOST (default 127.0.0.1;
# 0.0.0.0 to reach the UI from other machines), VENV (default <repo>/.venv), AIRFLOW_PARALLELISM
# (default 2 x CPU cores: the LocalExecutor's worker processes, 32 by default, ~55 MB each).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PORT="${AIRFLOW_PORT:-8080}"

if [[ ! -x "$VENV/bin/airflow" ]]; then
  echo "airflow not found in $VENV/bin — run 'make venv' first" >&2
  exit 1
fi

export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/airflow_home}"
# standalone starts its components as `airflow ...`: the venv's bin must come first on PATH
export PATH="$VENV/bin:$PATH"
# tasks import the stage functions from pipelines/ at the repository root
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW_PARALLELISM:-$(( $(nproc 2>/dev/null || echo 2) * 2 ))}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__API__HOST="${AIRFLOW_API_HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="$PORT"
# tasks report back to the api-server's execution API; it follows the port chosen here
export AIRFLOW__API__BASE_URL="http://localhost:$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$PORT/execution/"
export AIRFLOW__MMCOMPRESS__PROJECT_ROOT="${AIRFLOW__MMCOMPRESS__PROJECT_ROOT:-$REPO}"
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
# macOS: forked task processes crash in the system proxy lookup unless NO_PROXY is set
export NO_PROXY="${NO_PROXY:-*}"
mkdir -p "$AIRFLOW_HOME"

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<EOF
mmcompress local Airflow
  UI:        http://localhost:$PORT
  login:     admin — the password is generated on first start and written to
             $PASSWORDS
  state:     $AIRFLOW_HOME  (SQLite metadata DB, logs; delete it to start afresh)
  DAGs:      $AIRFLOW__CORE__DAGS_FOLDER  (mmcompress_pipeline, mmcompress_drift, mmcompress_rebuild_index)
  stop:      Ctrl-C (stops every component)
EOF
echo

# The components `airflow standalone` would start, run here so that (1) the scheduler and the
# triggerer skip their log servers, which bind every interface with no host setting in Airflow
# 3.3 (on one machine the API server reads task logs from the log folder itself), and (2) one
# Ctrl-C stops them all: standalone could leave a component running after it.
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping Airflow (${#pids[@]} components)..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 30); do  # up to 15 s for a clean shutdown, then force it
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Airflow stopped"
}
trap stop INT TERM EXIT
airflow api-server --host "$AIRFLOW__API__HOST" --port "$PORT" & pids+=($!)
airflow scheduler --skip-serve-logs & pids+=($!)
airflow dag-processor & pids+=($!)
airflow triggerer --skip-serve-logs & pids+=($!)
for _ in $(seq 1 120); do  # the API server writes the password file when it starts
  [[ -f "$PASSWORDS" ]] && { echo "  password:  $(cat "$PASSWORDS")"; break; }
  sleep 1
done
wait -n "${pids[@]}" || true  # one component exiting stops the rest
