"""azure-identity + azure-keyvault-keys, unchanged, against the emulator: create a key, wrap and
unwrap through CryptographyClient as a second principal granted Key Vault Crypto User, then see
the service refuse the next unwrap (403 ForbiddenByRbac) once the grant is removed."""

import os
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, KeyWrapAlgorithm

from conftest import unique

CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"


def _vault(emu, rbac=True, policies=None):
    b = emu.bootstrap
    rg = unique("rg")
    r = emu.arm("PUT", f"/subscriptions/{b['subscription_id']}/resourcegroups/{rg}", {"location": "eastus"},
                api_version="2022-09-01")
    assert r.status_code in (200, 201), r.text
    name = unique("kv")
    vid = f"/subscriptions/{b['subscription_id']}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}"
    props = {"tenantId": b["tenant_id"], "sku": {"family": "A", "name": "standard"},
             "enableRbacAuthorization": rbac, "accessPolicies": policies or []}
    r = emu.arm("PUT", vid, {"location": "eastus", "properties": props})
    assert r.status_code in (200, 201), r.text
    assert r.json()["properties"]["vaultUri"] == f"https://{name}.vault.azure.net/"
    return name, vid


def _principal(emu, **creds):
    b = emu.bootstrap
    r = emu.admin("POST", "applications", {"home_tenant_id": b["tenant_id"], "display_name": unique("app"),
                                           "multi_tenant": False, **creds})
    assert r.status_code == 201, r.text
    app = r.json()
    r = emu.graph("POST", "/v1.0/servicePrincipals", {"appId": app["app_id"]})
    assert r.status_code == 201, r.text
    return app, r.json()["id"]


def test_create_wrap_unwrap_then_revocation_is_enforced(emu):
    b = emu.bootstrap
    admin = ClientSecretCredential(b["tenant_id"], b["client_id"], b["client_secret"])
    name, vid = _vault(emu)
    kc = KeyClient(vault_url=f"https://{name}.vault.azure.net", credential=admin)
    key = kc.create_rsa_key(unique("k"), size=2048)
    assert key.id.startswith(f"https://{name}.vault.azure.net/keys/")

    app, sp = _principal(emu, generate_secret=True)
    ra = f"{vid}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}"
    r = emu.arm("PUT", ra, {"properties": {
        "roleDefinitionId": f"/subscriptions/{b['subscription_id']}/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_USER}",
        "principalId": sp, "principalType": "ServicePrincipal"}}, api_version="2022-04-01")
    assert r.status_code == 201, r.text

    cred = ClientSecretCredential(b["tenant_id"], app["app_id"], app["client_secret"])
    cc = CryptographyClient(key.id, credential=cred)
    secret = os.urandom(32)
    for alg in (KeyWrapAlgorithm.rsa_oaep, KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa1_5):
        wrapped = cc.wrap_key(alg, secret)
        assert cc.unwrap_key(alg, wrapped.encrypted_key).key == secret
    enc = cc.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"hello")
    assert cc.decrypt(EncryptionAlgorithm.rsa_oaep_256, enc.ciphertext).plaintext == b"hello"

    wrapped = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, secret)
    r = emu.arm("DELETE", ra, api_version="2022-04-01")
    assert r.status_code in (200, 204), r.text
    # Same credential, cached token: the service re-checks authorization on every request.
    with pytest.raises(HttpResponseError) as err:
        cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert err.value.status_code == 403
    assert "ForbiddenByRbac" in str(err.value.response.text())


def test_access_policy_vault_and_certificate_credential(emu, tmp_path):
    b = emu.bootstrap
    # A certificate credential, registered through the admin API; MSAL signs the assertion.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import datetime

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conformance")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subj).issuer_name(subj).public_key(k.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(k, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    app, sp = _principal(emu, certificate_pem=cert_pem)
    pem_file = tmp_path / "cred.pem"
    pem_file.write_text(key_pem + cert_pem)

    policy = {"tenantId": b["tenant_id"], "objectId": sp,
              "permissions": {"keys": ["get", "wrapKey", "unwrapKey"]}}
    admin_policy = {"tenantId": b["tenant_id"], "objectId": _bootstrap_sp(emu),
                    "permissions": {"keys": ["all"]}}
    name, vid = _vault(emu, rbac=False, policies=[policy, admin_policy])
    admin = ClientSecretCredential(b["tenant_id"], b["client_id"], b["client_secret"])
    key = KeyClient(vault_url=f"https://{name}.vault.azure.net", credential=admin).create_rsa_key(unique("k"))

    cred = CertificateCredential(b["tenant_id"], app["app_id"], certificate_path=str(pem_file))
    cc = CryptographyClient(key.id, credential=cred)
    secret = os.urandom(32)
    wrapped = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep, secret)
    assert cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped.encrypted_key).key == secret

    r = emu.arm("PUT", f"{vid}/accessPolicies/remove", {"properties": {"accessPolicies": [
        {"tenantId": b["tenant_id"], "objectId": sp, "permissions": {"keys": ["unwrapKey"]}}]}})
    assert r.status_code == 200, r.text
    with pytest.raises(HttpResponseError) as err:
        cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped.encrypted_key)
    assert err.value.status_code == 403
    assert "ForbiddenByPolicy" in str(err.value.response.text())


def test_missing_key_is_resource_not_found(emu):
    b = emu.bootstrap
    admin = ClientSecretCredential(b["tenant_id"], b["client_id"], b["client_secret"])
    name, _ = _vault(emu)
    with pytest.raises(ResourceNotFoundError):
        KeyClient(vault_url=f"https://{name}.vault.azure.net", credential=admin).get_key("does-not-exist")


def _bootstrap_sp(emu):
    b = emu.bootstrap
    r = emu.graph("GET", f"/v1.0/servicePrincipals?$filter=appId eq '{b['client_id']}'")
    assert r.status_code == 200, r.text
    return r.json()["value"][0]["id"]
