"""TLS to the stores: the SSL context of a ``*.tls`` setting, and a TLS failure told in one line.

A context verifies the server's certificate (``tls.ca_file``, or the system's trust store) and, unless
``tls.verify_hostname`` is off, its name against the address connected to; it offers TLS 1.2 or later; with
``tls.cert_file``/``tls.key_file`` it presents a client certificate.  A file that cannot be loaded is a
:class:`~cdcpipe.errors.ConfigError` naming the setting.  A handshake that fails because of what is configured (an
unknown CA, a name that does not match, a client certificate refused) is no outage to wait out:
:func:`tls_failure` finds it in an exception (however wrapped) so the process can stop at start with one line.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

from cdcpipe.config import TlsSettings
from cdcpipe.errors import ConfigError


def ssl_context(tls: TlsSettings, setting: str) -> ssl.SSLContext | None:
    """The client context of ``tls`` (``setting``: its name, e.g. ``postgres.tls``, for errors); None when off."""
    if not tls.enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=None if tls.ca_file is None else str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{setting}.ca_file {tls.ca_file}: cannot load the CA: {_why(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify_hostname:
        ctx.check_hostname = False
    if tls.cert_file is not None and tls.key_file is not None:
        password = None if tls.key_password is None else tls.key_password.get_secret_value()
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{setting}.cert_file {tls.cert_file} / key_file {tls.key_file}: cannot load the "
                              f"client certificate: {_why(exc)}") from None
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the per-host errors a driver collects (``errors``), depth first."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        errors = getattr(e, "errors", None)
        if isinstance(errors, dict):
            todo += [x for x in errors.values() if isinstance(x, BaseException)]
        todo += [x for x in getattr(e, "args", ()) if isinstance(x, BaseException)]


_CONFIG_REASONS = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "TLSV1_ALERT_UNKNOWN_CA",
                   "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                   "TLSV1_ALERT_ACCESS_DENIED", "NO_PROTOCOLS_AVAILABLE", "UNSUPPORTED_PROTOCOL")


def tls_failure(exc: BaseException) -> str | None:
    """What failed in a TLS handshake that configuration caused (one line), or None when ``exc`` holds no such
    failure (a refused connection, a timeout: an outage to wait out)."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"the server's certificate was not accepted: {e.verify_message or e.reason}"
        if isinstance(e, ssl.SSLError) and (e.reason or "") in _CONFIG_REASONS:
            return f"TLS handshake refused: {e.reason}"
        if isinstance(e, ssl.SSLError) and "certificate" in str(e).lower():
            return f"TLS handshake refused: {e.reason or e}"
        text = str(e)  # the Cassandra driver keeps only the text of the SSL error ("... Last error: [SSL: ...")
        if isinstance(e, OSError) and "[SSL: " in text:
            reason = text[text.index("[SSL: "):]
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                return f"the server's certificate was not accepted: {reason.split('] ', 1)[-1].split(' (_ssl', 1)[0]}"
            if any(r in reason for r in _CONFIG_REASONS):
                return f"TLS handshake refused: {reason.split(' (_ssl', 1)[0]}"
    return None
