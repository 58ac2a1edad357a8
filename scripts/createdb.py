"""Create the Postgres database settings chose (kubefunction.state_backends) if it is missing."""

import os
import sys
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kubefunction.settings")
from django.conf import settings  # noqa: E402

config = settings.DATABASES["default"]
if config["ENGINE"] != "django.db.backends.postgresql":
    sys.exit(0)
connection = psycopg2.connect(dbname="postgres", user=config["USER"], host=config["HOST"],
                              port=config["PORT"] or 5432, password=config["PASSWORD"] or None,
                              connect_timeout=5)
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]])
    if cursor.fetchone() is None:
        cursor.execute(f'CREATE DATABASE "{config["NAME"]}"')
        print(f"created database {config['NAME']}", file=sys.stderr)
connection.close()
