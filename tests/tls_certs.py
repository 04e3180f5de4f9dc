"""Certificates made for one test (trustme): a CA, RabbitMQ's server certificate, a client's.

Written as PEM files, as an operator would have them, for ``--amqp-ca-file``,
``--amqp-cert-file`` and ``--amqp-key-file`` and for the TLS proxy of the tests.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFixture:
    ca_file: Path  # the CA that signed both certificates below
    server_cert_file: Path  # for localhost and 127.0.0.1, key included
    client_cert_file: Path
    client_key_file: Path
    other_ca_file: Path  # a CA that signed neither
    ca: trustme.CA

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """A server side that requires (and verifies) a client certificate from our CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert_file)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_file)
        return context


def make_tls_files(directory: Path) -> TlsFixture:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="spectacles test CA")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("spectacles-gateway@example.test", common_name="spectacles-gateway")
    other = trustme.CA(organization_name="some other CA")
    paths = {
        "ca_file": directory / "ca.pem",
        "server_cert_file": directory / "server.pem",
        "client_cert_file": directory / "client.pem",
        "client_key_file": directory / "client.key",
        "other_ca_file": directory / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca_file"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server_cert_file"]))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(paths["client_cert_file"]), append=True)
    client.private_key_pem.write_to_path(str(paths["client_key_file"]))
    other.cert_pem.write_to_path(str(paths["other_ca_file"]))
    return TlsFixture(ca=ca, **paths)
