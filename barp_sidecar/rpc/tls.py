"""TLS and mTLS for gRPC: server credentials, channel credentials and port binding from PEM file paths.

Owns turning the settings' file paths (``tls_cert_file``, ``tls_key_file``, ``tls_client_ca_file`` on a
server; ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file`` on a client) into grpc credentials, and
checking those files before any port binds. It does not own the settings themselves (they live in
``barp_sidecar.settings`` for the sidecar and ``trainer.service.settings`` for the trainer: callers pass
the paths and the dotted section that holds them, so a ``ConfigError`` names the exact key).

Every file is read once, when the credentials are built: a rotated certificate takes effect on the next
restart (Kubernetes: a rolling restart after the Secret changes).

The PEM files are checked with the standard library's ``ssl`` module, which grpc would otherwise only
reject at handshake time with an opaque message: a certificate that is not PEM, a key that does not match
its certificate, or a CA bundle with no certificate in it is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from barp_sidecar.errors import ConfigError


@dataclass(frozen=True)
class ServerTLSFiles:
    """PEM file paths of a gRPC server. ``cert_file`` None = plaintext.

    ``section`` is the dotted settings section the paths came from (``server``, ``admin``, ``service``),
    used to name the offending key in errors (``server.tls_key_file``).
    """

    cert_file: str | None = None
    key_file: str | None = None
    # CA bundle that client certificates must chain to; set = mTLS (a client without a valid cert is refused).
    client_ca_file: str | None = None
    section: str = "server"

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


@dataclass(frozen=True)
class ClientTLSFiles:
    """PEM file paths of a gRPC client. TLS is on when any is set; ``ca_file`` None = the system roots."""

    ca_file: str | None = None
    # Client certificate and key, presented when the server requires mTLS. Both or neither.
    cert_file: str | None = None
    key_file: str | None = None
    section: str = "trainer"

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None


def _read_pem(path: str, key: str) -> bytes:
    """The file's bytes; ConfigError naming ``key`` when it is missing, unreadable, empty or not PEM."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(key, f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(key, f"{path} is a directory, not a PEM file") from exc
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(key, f"{path} is not a PEM file (no '-----BEGIN' line)")
    return data


def _check_key_pair(cert_file: str, key_file: str, section: str) -> None:
    """Raise ConfigError when the private key does not load or does not match the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "values mismatch" in str(exc).lower():
            raise ConfigError(
                f"{section}.tls_key_file", f"{key_file} does not match the certificate in {cert_file}"
            ) from exc
        raise ConfigError(
            f"{section}.tls_cert_file",
            f"{cert_file} / {key_file} are not a usable certificate and private key ({reason})",
        ) from exc


def _check_ca_bundle(ca_file: str, key: str) -> None:
    """Raise ConfigError when ``ca_file`` holds no loadable certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(key, f"{ca_file} holds no usable CA certificate ({exc.reason or exc})") from exc


def _require_pair(cert_file: str | None, key_file: str | None, section: str) -> None:
    if (cert_file is None) != (key_file is None):
        raise ConfigError(f"{section}.tls_key_file", "tls_cert_file and tls_key_file go together")


def server_credentials(files: ServerTLSFiles) -> grpc.ServerCredentials | None:
    """Credentials for ``add_secure_port``, or None for plaintext (no ``cert_file``).

    With ``client_ca_file`` the server requires and verifies a client certificate chained to that CA.
    """
    section = files.section
    _require_pair(files.cert_file, files.key_file, section)
    if files.cert_file is None or files.key_file is None:
        if files.client_ca_file is not None:
            raise ConfigError(
                f"{section}.tls_client_ca_file",
                f"mTLS needs {section}.tls_cert_file and {section}.tls_key_file",
            )
        return None
    cert = _read_pem(files.cert_file, f"{section}.tls_cert_file")
    key = _read_pem(files.key_file, f"{section}.tls_key_file")
    _check_key_pair(files.cert_file, files.key_file, section)
    client_ca: bytes | None = None
    if files.client_ca_file is not None:
        client_ca = _read_pem(files.client_ca_file, f"{section}.tls_client_ca_file")
        _check_ca_bundle(files.client_ca_file, f"{section}.tls_client_ca_file")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(files: ClientTLSFiles) -> grpc.ChannelCredentials | None:
    """Credentials for ``secure_channel``, or None for plaintext (nothing set)."""
    section = files.section
    _require_pair(files.cert_file, files.key_file, section)
    if not files.enabled:
        return None
    ca: bytes | None = None
    if files.ca_file is not None:
        ca = _read_pem(files.ca_file, f"{section}.tls_ca_file")
        _check_ca_bundle(files.ca_file, f"{section}.tls_ca_file")
    cert: bytes | None = None
    key: bytes | None = None
    if files.cert_file is not None and files.key_file is not None:
        cert = _read_pem(files.cert_file, f"{section}.tls_cert_file")
        key = _read_pem(files.key_file, f"{section}.tls_key_file")
        _check_key_pair(files.cert_file, files.key_file, section)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def server_files_from(settings: object, section: str) -> ServerTLSFiles:
    """ServerTLSFiles from a settings section with tls_cert_file, tls_key_file and tls_client_ca_file."""
    return ServerTLSFiles(
        cert_file=getattr(settings, "tls_cert_file", None),
        key_file=getattr(settings, "tls_key_file", None),
        client_ca_file=getattr(settings, "tls_client_ca_file", None),
        section=section,
    )


def client_files_from(settings: object, section: str) -> ClientTLSFiles:
    """ClientTLSFiles from any settings section with ``tls_ca_file``/``tls_cert_file``/``tls_key_file``."""
    return ClientTLSFiles(
        ca_file=getattr(settings, "tls_ca_file", None),
        cert_file=getattr(settings, "tls_cert_file", None),
        key_file=getattr(settings, "tls_key_file", None),
        section=section,
    )


def bind_port(
    server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> int:
    """Add a plaintext or TLS port to ``server``; returns the bound port (``port`` 0 = any free port).

    Raises OSError naming the address when grpc cannot bind it (bad host, port in use). grpc enables
    SO_REUSEPORT unless the server was built with the option ``("grpc.so_reuseport", 0)``; without it a
    second server can bind a port that is already in use.
    """
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError
        raise OSError(f"cannot bind gRPC port {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {address}")
    return bound


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, object]] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target``: TLS when ``credentials`` is set, plaintext otherwise."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
