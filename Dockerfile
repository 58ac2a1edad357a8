# The platform's own image: web (gunicorn with uvicorn workers), worker and beat (Celery) all run from it; the k8s/
# manifests choose the command. Function images are built separately, by the worker, from
# functions/' Dockerfile template.
#
#   docker build -t kubefunction/platform:dev .
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t kubefunction/platform:dev .
#
# The default base is built locally by `scripts/services.sh` (Debian bookworm minbase + python3 +
# pip, no public registry needed); any Debian-like image with python3.11 and pip works.
ARG BASE_IMAGE=kubefunction/python-base:bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KUBEFUNCTION_VAR_DIR=/app/var \
    KUBEFUNCTION_MEDIA_ROOT=/data/media \
    KUBEFUNCTION_WORK_DIR=/var/lib/kubefunction/work

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt /app/requirements.txt
RUN pip install -r /app/requirements.txt

# The code, listed folder by folder (there is no .dockerignore: `COPY . .` would bring .venv,
# var/ and .env along).
COPY manage.py /app/manage.py
COPY kubefunction /app/kubefunction
COPY functions /app/functions
COPY triggers /app/triggers
COPY executions /app/executions
COPY metrics /app/metrics
COPY templates /app/templates
COPY examples /app/examples

# Static files of the admin and the API docs, collected at build time into $KUBEFUNCTION_VAR_DIR/
# static (the root filesystem is read-only at run time). The secret key and broker are
# build-only placeholders: settings read them at import, nothing is connected to.
RUN DJANGO_SECRET_KEY=build-only CELERY_BROKER_URL=redis://build-only:6379/0 \
      DATABASE_URL=sqlite:////tmp/build-only.sqlite3 \
      python -m compileall -q /app \
    && DJANGO_SECRET_KEY=build-only CELERY_BROKER_URL=redis://build-only:6379/0 \
      DATABASE_URL=sqlite:////tmp/build-only.sqlite3 \
      python manage.py collectstatic --noinput --verbosity 0 \
    && rm -f /tmp/build-only.sqlite3

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it (k8s/ uses the same ids).
RUN (groupadd --gid 10001 kubefunction && useradd --uid 10001 --gid 10001 --no-create-home \
      --home-dir /app --shell /usr/sbin/nologin kubefunction) \
    && mkdir -p /data/media /var/lib/kubefunction/work \
    && chown 10001:10001 /data/media /var/lib/kubefunction/work
USER 10001:10001

EXPOSE 8000
# The web process; the worker and beat override the command (see k8s/base/*.yaml and Procfile).
CMD ["gunicorn", "kubefunction.asgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", \
     "--worker-class", "uvicorn_worker.UvicornWorker", "--timeout", "120", "--access-logfile", "-", \
     "--worker-tmp-dir", "/tmp"]
