# Sourced by the Makefile: choose Postgres + Redis when they answer on 127.0.0.1, else the
# embedded SQLite + file-system broker. Variables already set (or in .env) win.
[ -f .env ] && set -a && . ./.env && set +a
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${KUBEFUNCTION_EMBEDDED:-}" ] && [ -z "${DATABASE_URL:-}" ] && [ -z "${CELERY_BROKER_URL:-}" ] \
   && answers 5432 && answers 6379; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/${KUBEFUNCTION_DB_NAME:-kubefunction}"
  export CELERY_BROKER_URL="redis://127.0.0.1:6379/${KUBEFUNCTION_REDIS_DB:-0}"
fi
if [ -n "${DATABASE_URL:-}" ]; then
  echo "kubefunction: database ${DATABASE_URL}, broker ${CELERY_BROKER_URL:-filesystem://}" >&2
else
  echo "kubefunction: embedded SQLite + file-system broker under ${KUBEFUNCTION_VAR_DIR:-var/}" \
       "(no Postgres + Redis on 127.0.0.1, or KUBEFUNCTION_EMBEDDED is set)" >&2
fi
