"""Real HTTP Digest and OAuth clients, and the seeds' flow driven the way a customer script would."""

import shutil
import subprocess
import uuid

import requests
from requests.auth import HTTPDigestAuth

from conftest import ACCEPT


def digest(up):
    return HTTPDigestAuth(up["api_key"]["public_key"], up["api_key"]["private_key"])


def test_requests_digest_auth_reads_projects(up):
    r = requests.get(f"{up['control_plane_url']}/api/atlas/v2/groups", auth=digest(up), headers={"Accept": ACCEPT}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == ACCEPT
    assert up["demo"]["group_id"] in [g["id"] for g in r.json()["results"]]


def test_digest_with_a_wrong_private_key_is_refused_with_a_challenge(up):
    r = requests.get(f"{up['control_plane_url']}/api/atlas/v2/groups",
                     auth=HTTPDigestAuth(up["api_key"]["public_key"], "wrong"), headers={"Accept": ACCEPT}, timeout=30)
    assert r.status_code == 401
    assert 'realm="MMS Public API"' in r.headers["WWW-Authenticate"]
    assert r.json()["error"] == 401


def test_curl_digest(up):
    curl = shutil.which("curl")
    assert curl, "curl is installed by scripts/test.sh"
    out = subprocess.run(
        [curl, "-s", "--fail-with-body", "--digest", "-u", f"{up['api_key']['public_key']}:{up['api_key']['private_key']}",
         "-H", f"Accept: {ACCEPT}", f"{up['control_plane_url']}/api/atlas/v2/groups/{up['demo']['group_id']}/encryptionAtRest"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"azureKeyVault"' in out.stdout


def test_oauth_token_revoke(up):
    sa = up["service_account"]
    base = up["control_plane_url"]
    tok = requests.post(f"{base}/api/oauth/token", auth=(sa["client_id"], sa["client_secret"]),
                        data={"grant_type": "client_credentials"}, timeout=30).json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600
    h = {"Authorization": f"Bearer {tok['access_token']}", "Accept": ACCEPT}
    assert requests.get(f"{base}/api/atlas/v2/groups", headers=h, timeout=30).status_code == 200
    r = requests.post(f"{base}/api/oauth/revoke", auth=(sa["client_id"], sa["client_secret"]),
                      data={"token": tok["access_token"], "token_type_hint": "access_token"}, timeout=30)
    assert r.status_code == 200
    assert requests.get(f"{base}/api/atlas/v2/groups", headers=h, timeout=30).status_code == 401


def test_seeds_flow_with_python_clients(up, emulator_dns):
    """Register the service principal, grant it as the customer, dry-run, PATCH, and read valid: true."""
    base, d = up["control_plane_url"], up["demo"]
    auth = digest(up)
    h = {"Accept": ACCEPT, "Content-Type": ACCEPT}
    g = d["group_id"]
    # Step 1: the role (re-use it if an earlier run of this layout registered it).
    roles = requests.get(f"{base}/api/atlas/v2/groups/{g}/cloudProviderAccess", auth=auth, headers=h, timeout=30).json()
    mine = [r for r in roles["azureServicePrincipals"] if r["servicePrincipalId"] == d["service_principal_id"]]
    if mine:
        role = mine[0]["_id"]
    else:
        r = requests.post(f"{base}/api/atlas/v2/groups/{g}/cloudProviderAccess", auth=auth, headers=h, timeout=60,
                          json={"providerName": "AZURE", "atlasAzureAppId": up["platform_app_id"],
                                "servicePrincipalId": d["service_principal_id"], "tenantId": d["customer_tenant_id"]})
        assert r.status_code == 200, r.text
        role = r.json()["_id"]
    # Step 2: the customer grants Reader and Key Vault Crypto User on the vault (ARM, as az does).
    with open(up["emulator_json"].replace("emulator/emulator.json", "demo.json")) as f:
        import json
        demo = json.load(f)
    admin = demo["customer_tenant"]
    tok = requests.post(f"https://login.microsoftonline.com/{admin['tenant_id']}/oauth2/v2.0/token", timeout=30,
                        data={"grant_type": "client_credentials", "client_id": admin["client_id"],
                              "client_secret": admin["client_secret"], "scope": "https://management.azure.com/.default"}
                        ).json()["access_token"]
    vault_id = demo["customer_vault_resource_id"]
    for role_def in ("acdd72a7-3385-48ef-bd42-f606fba81ae7", "12338af0-0e69-4776-bea7-57ae8d297424"):
        r = requests.put(
            f"https://management.azure.com{vault_id}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}?api-version=2022-04-01",
            headers={"Authorization": f"Bearer {tok}"}, timeout=30,
            json={"properties": {"roleDefinitionId": f"/subscriptions/{d['subscription_id']}/providers/Microsoft.Authorization/roleDefinitions/{role_def}",
                                 "principalId": d["service_principal_id"], "principalType": "ServicePrincipal"}})
        # `atrest up` has granted both already (its Cluster0 needs the key): Azure answers 409.
        assert r.status_code in (200, 201) or (r.status_code == 409 and r.json()["error"]["code"] == "RoleAssignmentExists"), r.text
    block = {"enabled": True, "roleId": role, "subscriptionID": d["subscription_id"], "resourceGroupName": d["resource_group"],
             "keyVaultName": d["key_vault_name"], "keyIdentifier": d["key_identifier"], "azureEnvironment": "AZURE"}
    # Step 3: the dry run passes every check.
    r = requests.post(f"{base}/api/atrest/v1/groups/{g}/encryptionAtRest/azureKeyVault:validate", auth=auth, headers=h,
                      json=block, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "VALID", r.text
    # Step 4 and 5.
    r = requests.patch(f"{base}/api/atlas/v2/groups/{g}/encryptionAtRest", auth=auth, headers=h,
                       json={"azureKeyVault": block}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["azureKeyVault"]["valid"] is True
    got = requests.get(f"{base}/api/atlas/v2/groups/{g}/encryptionAtRest", auth=auth, headers=h, timeout=30).json()
    assert got["azureKeyVault"]["valid"] is True
    assert got["azureKeyVault"]["roleId"] == role
