"""The emulator's CA and certificate pass OpenSSL's strict X.509 checks (Python 3.13 turns
VERIFY_X509_STRICT on by default; azure-cli and MSAL then refuse lax CAs)."""

import socket
import ssl


def test_ca_passes_strict_x509_verification_for_every_cloud_host(emu):
    ctx = ssl.create_default_context(cafile=emu.ca)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    for host in ["login.microsoftonline.com", "management.usgovcloudapi.net", "graph.microsoft.com",
                 "myvault.vault.azure.net", "other.vault.azure.cn", "kv.vault.usgovcloudapi.net"]:
        with socket.create_connection((emu.host, emu.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_certificate_does_not_cover_foreign_hosts(emu):
    ctx = ssl.create_default_context(cafile=emu.ca)
    with socket.create_connection((emu.host, emu.port), timeout=10) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="example.com")
        except ssl.SSLCertVerificationError:
            return
    raise AssertionError("a certificate for example.com was accepted")
