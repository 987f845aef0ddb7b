"""Queue mode: the API enqueues jobs on Celery (Redis) for ``swinxseg worker`` processes that share
one storage folder (docs/SERVICE.md, "Scaling out")."""
