"""RabbitMQ URLs, TLS and queue arguments as pure functions: no socket is opened here.

- **Several URLs** (the nodes of a cluster): ``--amqp-url`` holds one or more URLs separated by
  commas (:func:`split_urls`, :func:`parse_urls`). :class:`Endpoints` tries them round robin: a
  failed connect or a lost connection moves on to the next URL at once, and the bridge's backoff
  applies only once every URL failed in a row (a full round).
- **TLS**: ``amqps://`` URLs connect with the :class:`ssl.SSLContext` of :func:`ssl_context`
  (a CA file, else the system's CAs; an optional client certificate and key), and verify that
  the server's certificate names the URL's host (``server_hostname``).
- **Queue types**: :func:`queue_arguments` gives the ``queue.declare`` arguments of the queues the
  gateway owns (``classic`` durable, the Spectacles default, or ``quorum``), and
  :func:`declare_error` turns the broker's PRECONDITION_FAILED for a queue that exists with
  another type into a :class:`QueueTypeMismatch`: a configuration error, not a reason to
  reconnect forever.

Every message here shows URLs through :func:`shard_worker.logs.mask_url`: never a password.
"""

from __future__ import annotations

import ipaddress
import random
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pika

from shard_worker.gateway.backoff import exponential_backoff
from shard_worker.logs import URL_LIST_SEPARATOR, mask_url

SCHEMES = ("amqp", "amqps")
QUEUE_TYPES = ("classic", "quorum")
DEFAULT_QUEUE_TYPE = "classic"
#: The query parameters pika reads from a URL (``URLParameters._set_url_*``), minus
#: ``ssl_options``: TLS is configured with the CA, certificate and key file options instead.
URL_QUERY_PARAMETERS = frozenset(
    {
        "blocked_connection_timeout",
        "channel_max",
        "client_properties",
        "connection_attempts",
        "frame_max",
        "heartbeat",
        "locale",
        "retry_delay",
        "socket_timeout",
        "stack_timeout",
        "tcp_options",
    }
)
_HOST = re.compile(r"[A-Za-z0-9_.\-]{1,253}")


class BrokerConfigError(Exception):
    """RabbitMQ cannot be used with this configuration and retrying cannot help (a bad URL or TLS
    file, a queue of another type): the worker exits with code 2, which halts the supervisor.
    ``str()`` is one line that says what to change."""


class QueueTypeMismatch(BrokerConfigError):
    """A queue the gateway declares exists with another type (or other arguments)."""

    def __init__(self, message: str, queue: str) -> None:
        super().__init__(message)
        self.queue = queue


class TlsConfigError(BrokerConfigError, ValueError):
    """A TLS file cannot be used; ``setting`` names the option at fault (``amqp_ca_file``...)."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting
        self.reason = reason


# -- URLs -------------------------------------------------------------------------------------


def split_urls(text: str | Sequence[str]) -> list[str]:
    """The URLs of ``text``: split at each comma followed by ``scheme://``, blanks stripped, empty
    items dropped. A sequence (a TOML array) is split item by item."""
    items = [text] if isinstance(text, str) else list(text)
    urls: list[str] = []
    for item in items:
        for part in URL_LIST_SEPARATOR.split(item):
            # Trailing commas and blanks ("a,,b", "a,") are separators with nothing after them.
            part = part.strip().rstrip(",").strip()
            if part:
                urls.append(part)
    return urls


def validate_url(url: str) -> str:
    """``url`` stripped if it is a usable AMQP URL, else ValueError with a one-line reason that
    shows the URL with its password masked."""
    url = url.strip()
    shown = mask_url(url)
    if re.search(r",\s*amqps?:(?!//)", url, re.IGNORECASE):
        raise ValueError(f"{shown!r}: a URL after a comma lacks the '//' of 'amqp://'")
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo and any(ch in userinfo for ch in "/?#"):
        # urlsplit would end the host inside the password, and its errors would quote a piece
        # of it: refuse before parsing, quoting nothing.
        raise ValueError(
            f"{shown!r}: the password (or user) holds an unencoded '/', '?' or '#': "
            "percent-encode it (%2F, %3F, %23)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as error:
        raise ValueError(f"{shown!r} is not a valid URL ({_reason_without_password(url, error)})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"{shown!r} is not an AMQP URL (expected amqp:// or amqps://)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{shown!r} has no host")
    if not _HOST.fullmatch(host):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{shown!r} has a bad host {host!r} (several URLs are separated by commas, each "
                "with its scheme: amqp://a,amqp://b)"
            ) from None
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 is not a port to connect to")
    if parts.path.count("/") > 1:
        raise ValueError(f"{shown!r}: the virtual host cannot hold a '/' (write it %2F)")
    for name in _query_names(parts.query):
        if name == "ssl_options":
            raise ValueError(
                f"{shown!r}: ssl_options in the URL is not supported; use --amqp-ca-file, "
                "--amqp-cert-file and --amqp-key-file"
            )
        if name not in URL_QUERY_PARAMETERS:
            known = ", ".join(sorted(URL_QUERY_PARAMETERS))
            raise ValueError(f"{shown!r}: unknown URL parameter {name!r} (known: {known})")
    try:
        pika.URLParameters(url)  # pika's own checks of the values (no socket)
    except Exception as error:  # noqa: BLE001 - any reason pika has is a bad URL
        reason = str(error).replace(url, shown)
        raise ValueError(f"{shown!r} is not a usable AMQP URL: {reason}") from None
    return url


def _reason_without_password(url: str, error: ValueError) -> str:
    """urlsplit's reason, which may quote a piece of a password (an unencoded '[' or ']'):
    asked again of the URL with the password replaced, it can only quote the host and port."""
    scheme, _, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if not at:
        return str(error)
    try:
        urlsplit(f"{scheme}://user:pass@{tail}").port  # noqa: B018 - raises the host's error
    except ValueError as host_error:
        return str(host_error)
    return "percent-encode '[' and ']' in the user and password"


def _query_names(query: str) -> list[str]:
    return [item.partition("=")[0] for item in query.split("&") if item]


def parse_urls(text: str | Sequence[str]) -> tuple[str, ...]:
    """Every URL of ``text`` (see :func:`split_urls`), validated; ValueError (one line, naming
    the URL's place in the list when there are several, passwords masked) for the first bad one
    or for an empty list."""
    urls = split_urls(text)
    if not urls:
        raise ValueError("no AMQP URL given")
    checked = []
    for number, url in enumerate(urls, 1):
        try:
            checked.append(validate_url(url))
        except ValueError as error:
            if len(urls) == 1:
                raise
            raise ValueError(f"URL {number} of {len(urls)}: {error}") from None
    return tuple(checked)


def passwords(text: str | Sequence[str]) -> list[str]:
    """The passwords of ``text``'s URLs, decoded as pika sends them (for the log redaction)."""
    found = []
    for url in split_urls(text):
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.append(unquote(password))
    return found


def is_tls(url: str) -> bool:
    return url.strip().lower().startswith("amqps://")


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """The TLS files of ``amqps://`` connections. No CA file: the system's CAs are trusted."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


def _refuse_passphrase() -> bytes:
    # Without this, OpenSSL would prompt for the passphrase on the terminal and block the worker.
    raise TlsConfigError("amqp_key_file", "the private key is encrypted: use a key without a passphrase")


def ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name (TLS 1.2 or later),
    with the client certificate if one is given. Reads the files (no socket); raises
    :class:`TlsConfigError` naming the option at fault."""
    if tls.key_file and not tls.cert_file:
        raise TlsConfigError("amqp_key_file", "a key without a certificate: pass --amqp-cert-file too")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except FileNotFoundError:
        raise TlsConfigError("amqp_ca_file", f"{tls.ca_file}: no such file") from None
    except (ssl.SSLError, OSError, ValueError) as error:
        raise TlsConfigError(
            "amqp_ca_file", f"{tls.ca_file}: not a PEM CA certificate ({_ssl_reason(error)})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:
        for setting, path in (("amqp_cert_file", tls.cert_file), ("amqp_key_file", tls.key_file)):
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as error:
                    raise TlsConfigError(setting, f"{path}: {error.strerror or error}") from None
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_passphrase)
        except TlsConfigError:
            raise
        except (ssl.SSLError, OSError, ValueError) as error:
            if tls.key_file is None:
                raise TlsConfigError(
                    "amqp_cert_file",
                    f"{tls.cert_file}: not a PEM certificate with its private key in the same "
                    f"file ({_ssl_reason(error)}); pass the key with --amqp-key-file",
                ) from None
            raise TlsConfigError(
                "amqp_key_file",
                f"cannot use the client certificate {tls.cert_file} with the key "
                f"{tls.key_file}: {_ssl_reason(error)} (PEM files, the key matching the "
                "certificate)",
            ) from None
    return context


def _ssl_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(reason)) or type(error).__name__


def connection_parameters(url: str, context: ssl.SSLContext | None = None) -> pika.URLParameters:
    """pika's parameters for ``url``; an ``amqps://`` URL gets ``context`` (else the system's
    CAs) and the URL's host as the name its certificate must carry. ValueError for a bad URL."""
    params = pika.URLParameters(url)
    if params.ssl_options is not None:
        if context is None:
            context = ssl_context(TlsFiles())
        params.ssl_options = pika.SSLOptions(context, server_hostname=urlsplit(url).hostname)
    return params


#: What TLS failures look like in pika's error text, and what to do about each.
_TLS_HINTS: tuple[tuple[str, str], ...] = (
    ("certificate verify failed",
     "the server's certificate is not signed by a trusted CA (--amqp-ca-file) or does not name "
     "the URL's host"),
    ("certificate required",
     "the server wants a client certificate: pass --amqp-cert-file and --amqp-key-file"),
    ("unknown ca",
     "the server does not trust the client certificate (--amqp-cert-file)"),
    ("bad certificate",
     "the server refused the client certificate (--amqp-cert-file)"),
    ("handshake failure",
     "the TLS handshake failed: does the server want a client certificate (--amqp-cert-file)?"),
    ("wrong version number",
     "that port does not speak TLS: amqps:// to a plain AMQP port?"),
    ("record layer failure",
     "that port does not speak TLS: amqps:// to a plain AMQP port?"),
)  # fmt: skip


def describe_error(error: BaseException) -> str:
    """One line for a failed connect: the innermost error pika wrapped (the connection
    workflow's last attempt, the phase that failed), e.g. ``SSLCertVerificationError: [SSL:
    CERTIFICATE_VERIFY_FAILED] certificate verify failed: ...`` rather than the bare
    ``AMQPConnectionWorkflowFailed``."""
    for _ in range(8):  # a bounded unwrap: pika nests a few levels at most
        attempts = getattr(error, "exceptions", None)
        inner = attempts[-1] if attempts else getattr(error, "exception", None)
        if inner is None and len(error.args) == 1:
            inner = error.args[0]  # AMQPConnectionError(AMQPConnectionWorkflowFailed(...))
        if not isinstance(inner, BaseException):
            break
        error = inner
    text = str(error) or repr(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def failure_hint(text: str) -> str:
    """What a connection failure's text means, for the log line: a TLS hint, or ``""``."""
    lowered = text.lower()
    for needle, hint in _TLS_HINTS:
        if needle in lowered:
            return hint
    return ""


# -- the round robin over URLs ----------------------------------------------------------------


class Endpoints:
    """The URLs of one bridge, tried in turn, with one TLS context for the ``amqps://`` ones.

    :meth:`failed` (a connect failed) and :meth:`lost` (a connection was lost) move to the next
    URL. The delay :meth:`failed` returns is 0 until every URL failed in a row; then the
    exponential backoff's next delay; :meth:`connected` starts the round and the backoff anew.
    One URL behaves as before: backoff between its attempts, an immediate retry after a loss.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        tls: TlsFiles | None = None,
        *,
        base: float = 0.5,
        cap: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.urls: tuple[str, ...] = tuple(split_urls(urls))
        if not self.urls:
            raise ValueError("no AMQP URL given")
        self.tls = tls or TlsFiles()
        self.index = 0
        self._base, self._cap, self._rng = base, cap, rng
        self._delays = self._new_backoff()
        self._failed_in_round = 0
        self._context: ssl.SSLContext | None = None

    def _new_backoff(self) -> Iterator[float]:
        return exponential_backoff(base=self._base, cap=self._cap, rng=self._rng)

    @property
    def current(self) -> str:
        """The URL the next (or the current) connection uses."""
        return self.urls[self.index]

    def _advance(self) -> None:
        self.index = (self.index + 1) % len(self.urls)

    def parameters(self) -> pika.URLParameters:
        """pika's parameters for :attr:`current`; :class:`BrokerConfigError` for a URL pika
        refuses or a TLS file that cannot be used (read once, on the first ``amqps://`` URL)."""
        url = self.current
        try:
            if is_tls(url) and self._context is None:
                self._context = ssl_context(self.tls)
            return connection_parameters(url, self._context)
        except TlsConfigError:
            raise
        except ValueError as error:
            raise BrokerConfigError(f"{mask_url(url)}: {str(error).replace(url, mask_url(url))}") from None

    def failed(self) -> float:
        """The connection to :attr:`current` failed: move to the next URL and return how long to
        wait before trying it."""
        self._advance()
        self._failed_in_round += 1
        if self._failed_in_round < len(self.urls):
            return 0.0
        self._failed_in_round = 0
        return next(self._delays)

    def connected(self) -> None:
        """:attr:`current` is connected: the next failure starts a new round and backoff."""
        self._failed_in_round = 0
        self._delays = self._new_backoff()

    def lost(self) -> None:
        """The connection to :attr:`current` was lost: the next attempt goes to the next URL."""
        self._advance()
        self._failed_in_round = 0

    def describe_next(self, delay: float) -> str:
        """How the log line of a failure ends: ``retrying in 0.5 s``, plus ``with <next URL>``
        (password masked) when there are several."""
        if len(self.urls) == 1:
            return f"retrying in {delay:.1f} s"
        return f"retrying in {delay:.1f} s with {mask_url(self.current)}"


# -- queue types ------------------------------------------------------------------------------


def queue_arguments(queue_type: str) -> dict[str, str] | None:
    """The ``queue.declare`` arguments of the gateway's queues for ``queue_type``.

    ``classic`` declares no argument, exactly as before (and as Spectacles clients do), so the
    queues of an existing deployment stay equivalent; ``quorum`` sets ``x-queue-type``.
    """
    if queue_type == "classic":
        return None
    if queue_type == "quorum":
        return {"x-queue-type": "quorum"}
    raise ValueError(f"expected {' or '.join(QUEUE_TYPES)}, got {queue_type!r}")


_CURRENT_TYPE = re.compile(r"but current is (?:the value '(?P<type>[a-z]+)'|(?P<none>none))")


def declare_error(queue: str, queue_type: str, reason: str) -> BrokerConfigError | None:
    """What a failed ``queue.declare`` of ``queue`` means: a :class:`QueueTypeMismatch` when the
    broker said PRECONDITION_FAILED (the queue exists with another type or other arguments), or
    ``None``: a connection problem, to be retried."""
    if "PRECONDITION_FAILED" not in reason or "inequivalent arg" not in reason:
        return None
    match = _CURRENT_TYPE.search(reason)
    if "'x-queue-type'" in reason and match:
        current = match.group("type") or "classic"  # no x-queue-type: a classic queue
        return QueueTypeMismatch(
            f"queue {queue!r} exists as a {current} queue but --queue-type is {queue_type}: "
            f"RabbitMQ cannot change the type of a queue. Delete the queue (its messages go "
            f"with it; e.g. rabbitmqctl delete_queue {queue!r}) or start with --queue-type "
            f"{current}",
            queue,
        )
    detail = reason.split(" - ", 1)[-1].strip(" \"')")
    return QueueTypeMismatch(
        f"queue {queue!r} exists with other arguments than the gateway declares ({detail}): "
        "delete the queue or declare it as the gateway does (durable, --queue-type "
        f"{queue_type})",
        queue,
    )
