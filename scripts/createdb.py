"""Create the Postgres database named in DATABASE_URL when it does not exist yet."""

import os
import sys

import environ
import psycopg2

url = os.environ.get("DATABASE_URL", "")
if not url.startswith(("postgres://", "postgresql://")):
    sys.exit(0)
config = environ.Env.db_url_config(url)
connection = psycopg2.connect(dbname="postgres", user=config["USER"], host=config["HOST"],
                              port=config["PORT"] or 5432, password=config["PASSWORD"] or None)
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [config["NAME"]])
    if cursor.fetchone() is None:
        cursor.execute(f'CREATE DATABASE "{config["NAME"]}"')
        print(f"created database {config['NAME']}", file=sys.stderr)
connection.close()
