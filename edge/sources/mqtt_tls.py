"""TLS for MQTT sources: the `ssl.SSLContext` built from a source's `[sources.tls]` table,
and the one line that says why a TLS connection failed.

The files were read and checked when the config was loaded (gateway/config.py), so
building the context here fails only if they changed since.

paho is given the broker's resolved address (edge/sources/mqtt.py resolves it without
blocking the loop) and would check the certificate against that address; the context here
checks it against the configured host name (or `server_name`) instead.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from gateway.config import MqttSourceSettings, MqttTlsSettings
from gateway.errors import ConfigError

DEFAULT_TLS_PORT = 8883


def wants_tls(settings: MqttSourceSettings) -> bool:
    return settings.tls is not None or settings.url.startswith("mqtts://")


class _NamedContext(ssl.SSLContext):
    """A client context that verifies the server under one fixed name, whatever
    `server_hostname` the caller passes (paho passes the address it connects to)."""

    server_name: str

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def server_name(ctx: ssl.SSLContext | None, host: str) -> str | None:
    """The name `ctx` verifies the broker under (None without TLS)."""
    if ctx is None:
        return None
    return ctx.server_name if isinstance(ctx, _NamedContext) else host


def client_context(tls: MqttTlsSettings, host: str, key: str = "tls") -> ssl.SSLContext:
    """Verifies the broker against `tls.ca_file` (or the system CAs) under `server_name`
    or `host`, and presents the client certificate if one is configured."""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    ctx.server_name = tls.server_name or host
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}: cannot load the TLS files: {exc}") from None
    return ctx


def describe(exc: BaseException) -> str:
    """One line for a failed (TLS) connection, with what usually causes it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message}): check ca_file"
    return explain(str(exc) or type(exc).__name__)


def explain(text: str) -> str:
    """`text` (an error paho or ssl gave), with the likely cause for a TLS alert."""
    if "certificate required" in text.lower() or "CERTIFICATE_REQUIRED" in text:
        return f"TLS: the broker requires a client certificate (cert_file, key_file): {text}"
    if "unknown ca" in text.lower() or "bad certificate" in text.lower():
        return f"TLS: the broker refused our client certificate: {text}"
    return text


class ErrorRecorder(logging.Handler):
    """Receives paho's own error lines (paho swallows a socket error on read and only logs
    it, e.g. the broker's TLS alert for a missing client certificate) and hands each one
    to `record`."""

    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._record = record

    def emit(self, record: logging.LogRecord) -> None:
        self._record(record.getMessage())


def paho_logger(name: str, record: Callable[[str], None]) -> logging.Logger:
    """A logger of this source alone (not registered with `logging`, so no global state),
    enabled for errors only: paho's per-packet debug calls stay one level check each."""
    logger = logging.Logger(f"{__name__}.{name}", logging.ERROR)
    logger.addHandler(ErrorRecorder(record))
    return logger
