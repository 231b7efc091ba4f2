"""Point the official Azure SDK for Python at a running atrest emulator, unchanged.

The emulator serves the real Azure host names. Here every Azure host name resolves to the
emulator's address (socket.getaddrinfo is wrapped, port included), and requests/MSAL trust
the emulator's CA through REQUESTS_CA_BUNDLE. URLs in the tests are exactly the real ones.
"""

import json
import os
import socket
import uuid

import pytest
import requests

_AZURE_SUFFIXES = (
    "login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us",
    "management.azure.com", "management.chinacloudapi.cn", "management.usgovcloudapi.net",
    "graph.microsoft.com", "microsoftgraph.chinacloudapi.cn", "graph.microsoft.us",
    ".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net",
)


class Emulator:
    def __init__(self, info):
        self.info = info
        host, port = info["listen"].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.ca = info["ca_pem"]
        self.bootstrap = info["bootstrap"]

    def token(self, principal, scope):
        r = requests.post(
            f"https://login.microsoftonline.com/{principal['tenant_id']}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": principal["client_id"],
                  "client_secret": principal["client_secret"], "scope": scope},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def arm(self, method, path, body=None, principal=None, api_version="2023-07-01"):
        tok = self.token(principal or self.bootstrap, "https://management.azure.com/.default")
        sep = "&" if "?" in path else "?"
        url = f"https://management.azure.com{path}"
        if "api-version=" not in path:
            url += f"{sep}api-version={api_version}"
        r = requests.request(method, url, json=body, headers={"Authorization": f"Bearer {tok}"}, timeout=30)
        return r

    def graph(self, method, path, body=None, principal=None):
        tok = self.token(principal or self.bootstrap, "https://graph.microsoft.com/.default")
        return requests.request(method, f"https://graph.microsoft.com{path}", json=body,
                                headers={"Authorization": f"Bearer {tok}"}, timeout=30)

    def admin(self, method, path, body=None):
        return self.arm(method, f"/_emulator/{path}", body)


@pytest.fixture(scope="session")
def emu():
    path = os.environ.get("ATREST_EMULATOR_JSON")
    if not path:
        pytest.fail("set ATREST_EMULATOR_JSON to the emulator.json of a running `atrest emulator` "
                    "(scripts/test.sh does this)")
    with open(path) as f:
        info = json.load(f)
    e = Emulator(info)
    real = socket.getaddrinfo

    def mapped(host, port, *args, **kwargs):
        if isinstance(host, str) and (host.lower().endswith(_AZURE_SUFFIXES)):
            return real(e.host, e.port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    socket.getaddrinfo = mapped
    os.environ["REQUESTS_CA_BUNDLE"] = e.ca
    yield e
    socket.getaddrinfo = real


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:10]}"
