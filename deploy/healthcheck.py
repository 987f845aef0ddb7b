"""Container health check: exit 0 when the local server answers /healthz, 1 otherwise.

Python rather than curl so that the image needs no extra package; stdlib only, fast to start.
"""

import os
import sys
import urllib.request

port = os.environ.get("SWINXSEG_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
