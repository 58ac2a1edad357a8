"""The embedded database: Django's SQLite backend with writers queued on a lock file
(kubefunction.sqlite.base)."""
