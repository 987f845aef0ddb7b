"""Container health check: exit 0 when the local server answers, 1 otherwise.

``healthcheck.py``: the API's /healthz on ``SWINXSEG_PORT``. ``healthcheck.py worker``: the
``swinxseg worker`` metrics endpoint on ``SWINXSEG_WORKER_METRICS_PORT`` (a worker serves no other
HTTP; it answers from start-up on, while the model loads and while a case runs).
Python rather than curl so that the image needs no extra package; stdlib only, fast to start.
"""

import os
import sys
import urllib.request

if sys.argv[1:] == ["worker"]:
    url = f"http://127.0.0.1:{os.environ.get('SWINXSEG_WORKER_METRICS_PORT', '9101')}/metrics"
else:
    url = f"http://127.0.0.1:{os.environ.get('SWINXSEG_PORT', '8000')}/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
