"""Atlas-style clients against a running `atrest up` (control plane + emulator).

The test command starts `atrest up` and points ATREST_UP_JSON at its up.json, the contract
that names the control plane URL, the bootstrap API key and service account, and the demo
layout. Control-plane calls go to 127.0.0.1 directly; calls to Azure host names (to grant the
platform's service principal, as the customer would) resolve to the emulator.
"""

import json
import os
import socket

import pytest
import requests

ACCEPT = "application/vnd.atlas.2023-01-01+json"
_AZURE_SUFFIXES = ("login.microsoftonline.com", "management.azure.com", "graph.microsoft.com", ".vault.azure.net")


@pytest.fixture(scope="session")
def up():
    path = os.environ.get("ATREST_UP_JSON")
    if not path:
        pytest.fail("ATREST_UP_JSON is not set: run these tests through scripts/test.sh, which starts `atrest up`")
    with open(path) as f:
        info = json.load(f)
    with open(info["emulator_json"]) as f:
        info["emulator"] = json.load(f)
    return info


@pytest.fixture(scope="session")
def emulator_dns(up):
    """Resolve Azure host names to the emulator and trust its CA (requests honours REQUESTS_CA_BUNDLE)."""
    host, port = up["emulator"]["listen"].rsplit(":", 1)
    real = socket.getaddrinfo

    def fake(name, p, *args, **kwargs):
        if isinstance(name, str) and any(name == s or name.endswith(s) for s in _AZURE_SUFFIXES):
            return real(host, int(port), *args, **kwargs)
        return real(name, p, *args, **kwargs)

    socket.getaddrinfo = fake
    os.environ["REQUESTS_CA_BUNDLE"] = up["emulator"]["ca_pem"]
    yield up["emulator"]
    socket.getaddrinfo = real


@pytest.fixture(scope="session")
def bearer(up):
    sa = up["service_account"]
    r = requests.post(f"{up['control_plane_url']}/api/oauth/token", auth=(sa["client_id"], sa["client_secret"]),
                      data={"grant_type": "client_credentials"}, timeout=30)
    r.raise_for_status()
    return r.json()["access_token"]
