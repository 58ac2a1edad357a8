# Sourced by `make test` and by the test commands: export the database and broker choice
# (kubefunction/state_backends.py decides, as settings do) so every process a test starts uses the
# same. It decides afresh from the environment and .env, never from the record `make up` left in
# var/platform.env, and the environment wins: the tests keep KUBEFUNCTION_DB_NAME,
# KUBEFUNCTION_REDIS_DB and KUBEFUNCTION_QUEUE as given. Nothing else needs it: plain
# `manage.py`, celery and shells find the choice through settings.
_kf_exports="$(.venv/bin/python kubefunction/state_backends.py shell)" \
  && eval "$_kf_exports"
unset _kf_exports
