"""``swinxseg worker``: a Celery worker of queue mode that runs one case at a time on this
machine's model (docs/SERVICE.md, "Scaling out").

Settings come from ``SWINXSEG_*`` (``SWINXSEG_QUEUE_URL`` and ``SWINXSEG_STORAGE_DIR`` are
required: the same values as the API's); the flags here override them. The worker loads the
model and warms it up before it takes its first job, runs Celery's ``solo`` pool (the model and
the GPU cap live in this one process: no fork after CUDA is initialised), and serves its own
Prometheus metrics on ``worker_metrics_port``.
"""

from __future__ import annotations

import argparse
import logging

from service.cli_flags import MODEL_FLAGS, Flag, add_settings_flags, settings_from_args
from service.settings import Settings

log = logging.getLogger(__name__)

HELP = "run a queue-mode worker (Celery, one case at a time)"
FLAGS = (
    *MODEL_FLAGS,
    Flag("queue_url", help="Celery broker and result backend (redis://host:6379/0)"),
    Flag("storage_dir", help="the shared jobs folder (the API's SWINXSEG_STORAGE_DIR)"),
    Flag("worker_metrics_port", help="Prometheus port of this worker (0 = none)"),
    Flag("log_json", help="one JSON object per log line"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_flags(parser, FLAGS)
    parser.add_argument("--name", help="this worker's name in job results and Celery (default: the host name); "
                        "give each worker on one machine its own")


def run(args: argparse.Namespace) -> int:
    from service.api.app import build_segmenter
    from service.errors import SwinxsegError
    from service.logs import configure_logging

    settings = settings_from_args(args, FLAGS)
    configure_logging(level=settings.log_level, json_lines=settings.log_json)
    if not settings.queue_url or settings.storage_dir is None:
        raise SwinxsegError("swinxseg worker needs SWINXSEG_QUEUE_URL and SWINXSEG_STORAGE_DIR (or --queue-url "
                            "and --storage-dir): the same as the API's", code="invalid_settings")
    return run_worker(settings, build_segmenter(settings), hostname=args.name)


def run_worker(settings: Settings, segmenter, *, hostname: str | None = None) -> int:
    """Warm ``segmenter`` up, then consume jobs until the worker is stopped (SIGTERM: the running
    case finishes first; SIGKILL: the job is delivered again, see :mod:`service.queue.celery_app`)."""
    from service.api.metrics import ServiceMetrics
    from service.queue.celery_app import TASK_NAME, make_celery, redacted, restore_lost_jobs_periodically
    from service.queue.worker import WorkerContext, run_job
    from service.storage import storage_root
    from service.workdir import claim_work_dir

    metrics = ServiceMetrics(gpu_mem_cap_mb=settings.gpu_mem_cap_mb)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr="0.0.0.0", registry=metrics.registry)  # noqa: S104
    if settings.warmup:
        segmenter.warmup()
    claimed = claim_work_dir(settings.work_dir)
    context = WorkerContext(segmenter=segmenter, settings=settings, storage=storage_root(settings),
                            work_dir=claimed.path, metrics=metrics)
    if hostname:
        context.name = hostname
    app = make_celery(settings)
    restore_lost_jobs_periodically(app)

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
    def segment_job(job_id: str) -> dict:
        return run_job(job_id, context)

    log.info("worker %s takes jobs from %s (queue %s)", context.name, redacted(settings.queue_url), settings.queue_name)
    argv = ["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "--without-gossip",
            "--without-mingle", f"--queues={settings.queue_name}", f"--loglevel={settings.log_level}"]
    if hostname:
        argv.append(f"--hostname={hostname}@%h")
    try:
        app.worker_main(argv=argv)
    finally:
        claimed.release()
    return 0
