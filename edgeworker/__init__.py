"""edgeworker: scheduled jobs for edge boxes, from one SQLite file, safe at a power cut."""

import sys

__version__ = "0.1.0"

# peewee imports psycopg2 at its own import when it can, and psycopg2's libpq loads OpenSSL
# (3.5 MB resident) and Python's ssl: a PostgreSQL database imports it when it is opened
# (edgeworker.postgres.driver), a job's code when it imports it (entry.openssl_for_jobs).
# peewee and huey import psycopg 3 too where it is installed (another program's driver, or
# huey's PostgresHuey's), with its own libpq and OpenSSL: edgeworker never uses it.
sys.modules.setdefault("psycopg2", None)
sys.modules.setdefault("psycopg", None)
