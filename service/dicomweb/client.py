"""The DICOMweb client (dicomweb-client on a requests session): server, credentials, timeouts and
bounded retries, all from ``Settings``; transport failures as typed errors naming the server.

Retries live in one place, the session's urllib3 ``Retry``: connection errors, read timeouts and
HTTP 429/502/503/504 are retried ``dicomweb_retries`` times with exponential backoff from
``dicomweb_backoff_s`` (``Retry-After`` respected). dicomweb-client's own retry loop is switched
off so the two do not multiply. STOW-RS (POST) is retried too: storing an instance again under
the same SOP Instance UID is idempotent on a DICOMweb server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import DicomWebError, DicomWebNotFoundError, DicomWebUnavailableError, InvalidInputError
from service.settings import Settings

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient
    from pydantic import SecretStr

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 502, 503, 504)


@dataclass(frozen=True)
class Server:
    """One DICOMweb server: its base URL and the credentials from ``Settings`` (never logged)."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    def auth_kind(self) -> str:
        return "bearer" if self.token else "basic" if self.username else "none"


def source_server(settings: Settings, url: str | None = None) -> Server:
    """The server studies come from: ``url`` (the CLI's ``--url``) or ``settings.dicomweb_url``.

    Raises:
        InvalidInputError: no URL configured, or not http(s).
    """
    url = url or settings.dicomweb_url
    if not url:
        raise InvalidInputError("no DICOMweb server configured: set SWINXSEG_DICOMWEB_URL (or --url)")
    return Server(_checked_url(url), settings.dicomweb_username, settings.dicomweb_password, settings.dicomweb_token)


def store_server(settings: Settings, source: Server) -> Server:
    """Where STOW-RS goes: ``settings.dicomweb_store_url`` with its own credentials, else ``source``."""
    if not settings.dicomweb_store_url:
        return source
    return Server(_checked_url(settings.dicomweb_store_url), settings.dicomweb_store_username,
                  settings.dicomweb_store_password, settings.dicomweb_store_token)


def _checked_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"DICOMweb URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def make_client(server: Server, settings: Settings) -> DICOMwebClient:
    """A ``DICOMwebClient`` for ``server`` with the settings' timeout, retries and credentials."""
    import requests
    from dicomweb_client.api import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(
        total=settings.dicomweb_retries, connect=settings.dicomweb_retries, read=settings.dicomweb_retries,
        status=settings.dicomweb_retries, backoff_factor=settings.dicomweb_backoff_s,
        status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if server.token:
        session.headers["Authorization"] = f"Bearer {server.token.get_secret_value()}"
    elif server.username:
        password = server.password.get_secret_value() if server.password else ""
        session.auth = (server.username, password)
    timeout = settings.dicomweb_timeout_s
    client = DICOMwebClient(server.url, session=session, timeout=(timeout, timeout))
    client.set_http_retry_params(retry=False)
    return client


@contextmanager
def dicomweb_errors(step: str, url: str, *, not_found: str | None = None) -> Iterator[None]:
    """Turn requests/HTTP failures of ``step`` against ``url`` into typed errors.

    Raises:
        DicomWebUnavailableError: connection refused/reset, timeout, 5xx, after the retries.
        DicomWebNotFoundError: HTTP 404 (``not_found`` is the message, when given).
        DicomWebError: any other HTTP error (401/403 named as a credentials problem).
    """
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:
            raise DicomWebNotFoundError(not_found or f"{step}: {url} answered 404 Not Found") from None
        if status in (401, 403):
            raise DicomWebError(
                f"{step}: {url} refused our credentials (HTTP {status}); check SWINXSEG_DICOMWEB_USERNAME/"
                "PASSWORD or TOKEN", code="dicomweb_unauthorized") from None
        if status >= 500:
            raise DicomWebUnavailableError(f"{step}: {url} failed with HTTP {status}{_body(exc.response)}") from None
        raise DicomWebError(f"{step}: {url} answered HTTP {status}{_body(exc.response)}") from None
    except (requests.Timeout, requests.exceptions.RetryError) as exc:
        raise DicomWebUnavailableError(f"{step}: {url} did not answer in time or kept failing "
                                       f"after the retries ({_reason(exc)})") from None
    except requests.ConnectionError as exc:
        if _timed_out(exc):
            raise DicomWebUnavailableError(f"{step}: {url} did not answer in time, after the retries "
                                           f"({_reason(exc)})") from None
        raise DicomWebUnavailableError(f"{step}: cannot reach the DICOMweb server {url} ({_reason(exc)})") from None


def _timed_out(exc: BaseException) -> bool:
    """Whether urllib3 gave up on a read/connect timeout (requests reports it as a ConnectionError
    once the retries are spent)."""
    from urllib3.exceptions import NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen or not isinstance(item, BaseException):
            continue
        seen.add(id(item))
        # NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError in urllib3 2.
        if isinstance(item, Urllib3Timeout) and not isinstance(item, NewConnectionError):
            return True
        todo.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return False


def _body(response) -> str:
    text = (getattr(response, "text", "") or "").strip().replace("\n", " ")
    return f": {text[:200]}" if text else ""


def _reason(exc: Exception) -> str:
    """The innermost cause's text (urllib3 wraps it twice), shortened."""
    inner: BaseException = exc
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    reason = getattr(inner, "reason", None)
    text = str(reason or inner)
    return " ".join(text.split())[:200]
