"""The real Azure CLI against the emulator: the seeds' commands in their order, then every
distinct `az` command that atrest prints (remediations, `atrest up`'s guide, `atrest doctor`),
each run verbatim through bash with real values, and what it printed checked.

Run by scripts/azcli-tests.sh, which starts the emulator on 127.0.0.1:443, maps the Azure host
names in /etc/hosts, points REQUESTS_CA_BUNDLE at the emulator's CA and gives az a throwaway
AZURE_CONFIG_DIR. The environment it passes: ATREST_EMULATOR_JSON, AZ (the az executable),
AZCLI_VAULTS (vault names mapped in /etc/hosts), ATREST_SOURCE_ROOT.

To cover a new command, add a `Step` to STEPS (a bash command with `{NAME}` placeholders, a
check on what it printed, and optionally values to keep for later steps). `test_every_az_command_atrest_prints_is_run`
fails when atrest's source prints an az command (subcommand and flags) that no step runs.
"""

import json
import os
import pathlib
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import requests

READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
AZ_BIN = os.path.dirname(os.environ.get("AZ", "az"))
SOURCE_ROOT = pathlib.Path(os.environ.get("ATREST_SOURCE_ROOT", pathlib.Path(__file__).resolve().parents[2]))
POLICY_KV, RBAC_KV = os.environ.get("AZCLI_VAULTS", "azcli-policy-kv azcli-rbac-kv").split()
RG = "rg-azcli"
KEY = "cmk"


# --------------------------------------------------------------------------------------------
# Checks on what a command printed
# --------------------------------------------------------------------------------------------

def js(out):
    return json.loads(out)


def eq(expected):
    """The output (one line, e.g. `-o tsv`) is exactly `expected` (a template)."""
    def check(out, v):
        assert out.strip() == expected.format(**v), out
    return check


def policy_for(object_id, out):
    policies = js(out)
    if isinstance(policies, dict):
        policies = policies["properties"]["accessPolicies"]
    return [p for p in policies if p["objectId"] == object_id]


def has_policy(perms):
    def check(out, v):
        mine = policy_for(v["SP"], out)
        assert len(mine) == 1, out
        assert sorted(p.lower() for p in mine[0]["permissions"]["keys"]) == sorted(p.lower() for p in perms), mine
        assert mine[0]["tenantId"] == v["TENANT"], mine
    return check


def assignment(role_guid, scope_var):
    def check(out, v):
        ra = js(out)
        assert ra["principalId"] == v["SP"], ra
        assert ra["principalType"] == "ServicePrincipal", ra
        assert ra["roleDefinitionId"].lower().endswith(f"/roledefinitions/{role_guid}"), ra
        assert ra["scope"].lower() == v[scope_var].lower(), ra
    return check


def json_field(path, expected):
    """`path` (dot-separated) of the JSON output equals `expected` (templates are filled in)."""
    def check(out, v):
        value = js(out)
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        want = expected.format(**v) if isinstance(expected, str) else expected
        assert value == want, f"{path} = {value!r}, expected {want!r}"
    return check


def all_of(*checks):
    def check(out, v):
        for c in checks:
            c(out, v)
    return check


def contains(*needles):
    def check(out, v):
        for n in needles:
            assert n.format(**v) in out, out
    return check


@dataclass
class Step:
    name: str
    cmd: str                       # bash, with {NAME} placeholders filled from the values so far
    check: Callable                # check(stdout, values)
    keep: dict = field(default_factory=dict)   # NAME -> function(stdout) -> value for later steps
    source: str = ""               # where atrest prints it (or "seeds")


def reset_output(password):
    """`az ad app credential reset` printed {appId, password, tenant} for the platform app; with
    `password` a new client secret (never put in the failure message), otherwise null."""
    def check(out, v):
        r = js(out)
        assert r["appId"] == v["APP"], f"appId {r.get('appId')!r}"
        assert r["tenant"] == v["PLATFORM_TENANT"], f"tenant {r.get('tenant')!r}"
        if password:
            assert isinstance(r["password"], str) and len(r["password"]) >= 40, "password is not a client secret"
        else:
            assert r["password"] is None, "password is set for a certificate credential"
    return check


def then_line(first, line):
    """The output is a JSON document checked by `first`, then the line `line` (a template)."""
    def check(out, v):
        body, _, last = out.rstrip("\n").rpartition("\n")
        assert last.strip() == line.format(**v), f"last line {last!r}"
        first(body, v)
    return check


# az logs in again as the platform's admin after signing in as the app, so later steps run as before.
RELOGIN_PLATFORM_ADMIN = (
    "az login --service-principal -u {PLATFORM_ADMIN} -p \"$PLATFORM_ADMIN_SECRET\" --tenant {PLATFORM_TENANT} -o none"
)


def kid_version(out):
    return js(out)["key"]["kid"].rstrip("/").rsplit("/", 1)[1]


STEPS = [
    # ---- The seeds, in their order (the customer's admin, logged in to the customer tenant) ----
    Step("tenant id", "az account show --query tenantId -o tsv", eq("{TENANT}"), source="seeds"),
    Step("sp list before create", "az ad sp list --filter \"appId eq '{APP}'\"",
         lambda out, v: (_ for _ in ()).throw(AssertionError(out)) if js(out) != [] else None, source="seeds"),
    Step("sp create", "az ad sp create --id {APP}",
         all_of(json_field("appId", "{APP}"), json_field("appOwnerOrganizationId", "{PLATFORM_TENANT}"),
                json_field("servicePrincipalType", "Application")),
         keep={"SP": lambda out: js(out)["id"]}, source="seeds"),
    Step("sp list after create", "az ad sp list --filter \"appId eq '{APP}'\"",
         all_of(json_field("0.id", "{SP}"), lambda out, v: len(js(out)) == 1 or pytest.fail(out)), source="seeds"),
    Step("Reader on the vault",
         "az role assignment create --assignee-object-id \"{SP}\" --assignee-principal-type ServicePrincipal "
         "--role \"Reader\" --scope \"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{RBAC_KV}\"",
         assignment(READER, "RBAC_KV_ID"), keep={"READER_ASSIGNMENT": lambda out: js(out)["id"]}, source="seeds"),
    Step("Key Vault Crypto User on the vault",
         "az role assignment create --assignee-object-id \"{SP}\" --assignee-principal-type ServicePrincipal "
         "--role \"Key Vault Crypto User\" --scope \"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{RBAC_KV}\"",
         assignment(CRYPTO_USER, "RBAC_KV_ID"), source="seeds"),
    Step("set-policy as the seeds write it",
         "az keyvault set-policy --subscription \"{SUB}\" --resource-group \"{RG}\" --name \"{POLICY_KV}\" "
         "--object-id \"{SP}\" --key-permissions get encrypt decrypt wrapKey unwrapKey",
         has_policy(["get", "encrypt", "decrypt", "wrapKey", "unwrapKey"]), source="seeds"),
    Step("set-policy without --resource-group (atrest's fix message)",
         "az keyvault set-policy --name {POLICY_KV} --object-id {SP} --key-permissions get encrypt decrypt wrapKey unwrapKey",
         has_policy(["get", "encrypt", "decrypt", "wrapKey", "unwrapKey"]), source="crates/azure/src/keyvault.rs"),
    Step("role assignment list",
         "az role assignment list --assignee \"{SP}\" --scope \"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{RBAC_KV}\"",
         lambda out, v: sorted(ra["roleDefinitionName"] for ra in js(out)) == ["Key Vault Crypto User", "Reader"]
         or pytest.fail(out), source="seeds"),
    Step("keyvault show as the seeds write it",
         "az keyvault show --name \"{POLICY_KV}\" --resource-group \"{RG}\" --query \"properties.accessPolicies\"",
         has_policy(["get", "encrypt", "decrypt", "wrapKey", "unwrapKey"]), source="seeds"),
    Step("keyvault show without --resource-group",
         "az keyvault show --name {POLICY_KV} --query properties.accessPolicies",
         has_policy(["get", "encrypt", "decrypt", "wrapKey", "unwrapKey"]), source="issue 10 §2"),

    # ---- What atrest prints: Cloud Provider Access, shape checks and validation fixes ----
    Step("subscription id", "az account show --query id -o tsv", eq("{SUB}"), source="crates/control/src/validate/shape.rs"),
    Step("sp object id", "az ad sp show --id {APP} --query id -o tsv", eq("{SP}"), source="crates/control/src/api/cpa.rs"),
    Step("re-enable the sp", "az ad sp update --id {APP} --set accountEnabled=true && az ad sp show --id {APP} --query accountEnabled -o tsv",
         eq("true"), source="crates/azure/src/entra_error.rs"),
    Step("vault id", "az keyvault show --name {RBAC_KV} --query id -o tsv", eq("{RBAC_KV_ID}"), source="crates/azure/src/keyvault.rs"),
    Step("vault tenant", "az keyvault show --name {RBAC_KV} --query properties.tenantId -o tsv", eq("{TENANT}"),
         source="crates/control/src/validate/checks.rs"),
    Step("vault uri", "az keyvault show --name {RBAC_KV} --query properties.vaultUri -o tsv",
         eq("https://{RBAC_KV}.vault.azure.net/"), source="crates/control/src/validate/checks.rs"),
    Step("data role with the scope from az keyvault show",
         "az role assignment create --assignee-object-id {SP} --assignee-principal-type ServicePrincipal "
         "--role \"Key Vault Crypto User\" --scope $(az keyvault show --name {RBAC_KV} --query id -o tsv)",
         assignment(CRYPTO_USER, "RBAC_KV_ID"), source="crates/azure/src/keyvault.rs"),
    Step("Reader as the ARM remediation prints it",
         "az role assignment create --assignee-object-id {SP} --assignee-principal-type ServicePrincipal --role Reader --scope {RBAC_KV_ID}",
         assignment(READER, "RBAC_KV_ID"), source="crates/azure/src/arm.rs"),
    Step("data role with --assignee (doctor's form)",
         "az role assignment create --role \"Key Vault Crypto User\" --assignee {SP} --scope {RBAC_KV_ID}",
         assignment(CRYPTO_USER, "RBAC_KV_ID"), source="crates/control/src/validate/checks.rs"),
    Step("role assignments including inherited, as a table",
         "az role assignment list --assignee {SP} --scope {RBAC_KV_ID} --include-inherited -o table",
         contains("Key Vault Crypto User", "Reader", "{APP}", "{RBAC_KV_ID}"), source="crates/control/src/validate/checks.rs"),
    Step("Reader with --assignee (ARM read fix)",
         "az role assignment create --assignee {SP} --role Reader --scope {RBAC_KV_ID}",
         assignment(READER, "RBAC_KV_ID"), source="crates/control/src/validate/checks.rs"),
    Step("resource group names", "az group list --query [].name -o tsv", eq("{RG}"),
         source="crates/control/src/validate/shape.rs"),
    Step("set-policy with list",
         "az keyvault set-policy --name {POLICY_KV} --object-id {SP} --key-permissions get list encrypt decrypt wrapKey unwrapKey",
         has_policy(["get", "list", "encrypt", "decrypt", "wrapKey", "unwrapKey"]), source="crates/azure/src/keyvault.rs"),
    Step("set-policy with --resource-group, minimum permissions",
         "az keyvault set-policy --name {POLICY_KV} --resource-group {RG} --object-id {SP} --key-permissions get encrypt decrypt",
         has_policy(["get", "encrypt", "decrypt"]), source="crates/control/src/validate/checks.rs"),
    Step("purge protection",
         "az keyvault update --name {RBAC_KV} --resource-group {RG} --enable-purge-protection true",
         json_field("properties.enablePurgeProtection", True), source="crates/control/src/validate/checks.rs"),
    Step("public network access",
         "az keyvault update --name {RBAC_KV} --public-network-access Enabled",
         json_field("properties.publicNetworkAccess", "Enabled"), source="crates/azure/src/keyvault.rs"),
    Step("approve the data nodes' private endpoint connection",
         "az keyvault private-endpoint-connection approve --vault-name {RBAC_KV} --name {PE_CONNECTION} "
         "--description 'for the atrest data nodes'",
         # az flattens the connection's `properties` into the object it prints.
         all_of(json_field("name", "{PE_CONNECTION}"),
                json_field("privateLinkServiceConnectionState.status", "Approved"),
                json_field("privateLinkServiceConnectionState.description", "for the atrest data nodes")),
         source="crates/control/src/api/nodes.rs"),
    Step("the connection is approved in the vault",
         "az keyvault private-endpoint-connection show --vault-name {RBAC_KV} --name {PE_CONNECTION} "
         "--query privateLinkServiceConnectionState.status -o tsv",
         eq("Approved"), source="crates/control/src/api/nodes.rs"),

    # ---- Keys (the customer admin is Key Vault Administrator of the subscription) ----
    Step("key create", "az keyvault key create --vault-name {RBAC_KV} --name {KEY} --kty RSA --size 3072",
         all_of(json_field("key.kty", "RSA"), contains("https://{RBAC_KV}.vault.azure.net/keys/{KEY}/")),
         keep={"VERSION": kid_version}, source="crates/control/src/validate/checks.rs"),
    Step("key id", "az keyvault key show --vault-name {RBAC_KV} --name {KEY} --query key.kid -o tsv",
         eq("https://{RBAC_KV}.vault.azure.net/keys/{KEY}/{VERSION}"), source="crates/control/src/validate/shape.rs"),
    Step("disable then enable a version",
         "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --version {VERSION} --enabled false >/dev/null && "
         "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --version {VERSION} --enabled true",
         json_field("attributes.enabled", True), source="crates/azure/src/keyvault.rs"),
    Step("allowed operations",
         "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --version {VERSION} --ops encrypt decrypt wrapKey unwrapKey",
         lambda out, v: sorted(js(out)["key"]["keyOps"]) == sorted(["encrypt", "decrypt", "wrapKey", "unwrapKey"]) or pytest.fail(out),
         source="crates/azure/src/keyvault.rs"),
    Step("expiry", "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --expires 2099-01-01T00:00:00Z",
         json_field("attributes.expires", "2099-01-01T00:00:00+00:00"), source="crates/azure/src/keyvault.rs"),
    Step("not before", "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --not-before 2020-01-01T00:00:00Z",
         json_field("attributes.notBefore", "2020-01-01T00:00:00+00:00"), source="crates/azure/src/keyvault.rs"),
    Step("key binding tag", "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY} --tags atrest-group=g1",
         json_field("tags.atrest-group", "g1"), source="crates/control/src/validate/checks.rs"),
    Step("key set-attributes without a version",
         "az keyvault key set-attributes --vault-name {RBAC_KV} --name {KEY}",
         json_field("key.kid", "https://{RBAC_KV}.vault.azure.net/keys/{KEY}/{VERSION}"), source="crates/control/src/validate/checks.rs"),
    Step("recover a deleted key",
         "az keyvault key delete --vault-name {RBAC_KV} --name {KEY} >/dev/null && "
         "az keyvault key recover --vault-name {RBAC_KV} --name {KEY}",
         json_field("key.kid", "https://{RBAC_KV}.vault.azure.net/keys/{KEY}/{VERSION}"), source="crates/azure/src/keyvault.rs"),
    Step("rotate the key (the key-age alert's fix)",
         "az keyvault key rotate --vault-name {RBAC_KV} --name {KEY}",
         lambda out, v: (js(out)["key"]["kid"].startswith("https://{RBAC_KV}.vault.azure.net/keys/{KEY}/".format(**v))
                         and js(out)["key"]["kid"] != "https://{RBAC_KV}.vault.azure.net/keys/{KEY}/{VERSION}".format(**v))
         or pytest.fail(out),
         source="crates/control/src/key_age.rs"),

    # ---- In the platform app's home tenant (its admin logs in with az login --tenant) ----
    Step("log in to the app's home tenant",
         "az login --service-principal -u {PLATFORM_ADMIN} -p \"$PLATFORM_ADMIN_SECRET\" --tenant {PLATFORM_TENANT} -o none && "
         "az account show --query tenantId -o tsv",
         eq("{PLATFORM_TENANT}"), source="crates/azure/src/entra_error.rs"),
    Step("federated credential",
         "az ad app federated-credential create --id {APP} --parameters "
         "'{{\"name\":\"atrest-nodes\",\"issuer\":\"https://token.actions.githubusercontent.com\",\"subject\":\"repo:org/repo:ref:refs/heads/main\",\"audiences\":[\"api://AzureADTokenExchange\"]}}'",
         all_of(json_field("name", "atrest-nodes"), json_field("subject", "repo:org/repo:ref:refs/heads/main")),
         source="crates/azure/src/entra_error.rs"),
    Step("new client secret (appended)",
         "az ad app credential reset --id {APP} --append",
         reset_output(password=True), keep={"APP_SECRET": lambda out: js(out)["password"]},
         source="crates/azure/src/entra_error.rs"),
    Step("the new client secret signs in",
         "az login --service-principal -u {APP} -p \"$APP_SECRET\" --tenant {PLATFORM_TENANT} --allow-no-subscriptions -o none && "
         "az account show --query user.name -o tsv && " + RELOGIN_PLATFORM_ADMIN,
         eq("{APP}"), source="crates/azure/src/entra_error.rs"),
    Step("new certificate (appended), and it signs in",
         "d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && cd \"$d\" && "
         "openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 30 -subj /CN=atrest-azcli 2>/dev/null && "
         "az ad app credential reset --id {APP} --cert @cert.pem --append && "
         "cat key.pem cert.pem > both.pem && "
         "az login --service-principal -u {APP} --certificate both.pem --tenant {PLATFORM_TENANT} --allow-no-subscriptions -o none && "
         "az account show --query user.name -o tsv && " + RELOGIN_PLATFORM_ADMIN,
         then_line(reset_output(password=False), "{APP}"), source="crates/azure/src/entra_error.rs"),
    Step("the app lists both credentials, without the secret",
         "az ad app show --id {APP} --query \"{{p: passwordCredentials, k: keyCredentials}}\"",
         lambda out, v: (len(js(out)["k"]) == 1 and js(out)["k"][0]["type"] == "AsymmetricX509Cert"
                         and js(out)["k"][0]["key"] is None and js(out)["p"]
                         and all(p["secretText"] is None for p in js(out)["p"])) or pytest.fail("unexpected credentials"),
         source="crates/azure/src/entra_error.rs"),
]

# Commands atrest prints that this suite cannot run yet, each with the reason. The coverage
# test accepts these, and prints them, so they stay visible.
NOT_RUN: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def run(cmd, values):
    """Run `cmd` (placeholders filled in) with bash -euo pipefail; secrets only in the environment."""
    filled = cmd.format(**values)
    # Every *_SECRET value (the admins' secrets, secrets a step created) goes to bash as an
    # environment variable of that name, never into a command line.
    secrets = {k: str(val) for k, val in values.items() if k.endswith("_SECRET")}
    env = dict(os.environ, PATH=f"{AZ_BIN}:{os.environ.get('PATH', '')}", **secrets)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", filled], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, redact(f"`{filled}` exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}", values)
    return filled, p.stdout


def redact(text, values):
    """`text` without the value of any *_SECRET (outputs such as credential reset's carry one)."""
    for k, val in values.items():
        if k.endswith("_SECRET") and val:
            text = text.replace(str(val), f"<{k}>")
    return text


@pytest.fixture(scope="module")
def values():
    info = json.loads(pathlib.Path(os.environ["ATREST_EMULATOR_JSON"]).read_text())
    boot = info["bootstrap"]
    session = requests.Session()

    def token(p, scope):
        r = session.post(f"https://login.microsoftonline.com/{p['tenant_id']}/oauth2/v2.0/token",
                         data={"grant_type": "client_credentials", "client_id": p["client_id"],
                               "client_secret": p["client_secret"], "scope": scope}, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def admin(method, path, body):
        tok = token(boot, "https://management.azure.com/.default")
        r = session.request(method, f"https://management.azure.com/_emulator/{path}", json=body,
                            headers={"Authorization": f"Bearer {tok}"}, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()

    # What Azure already has before the seeds start: a customer tenant with an admin, and the
    # platform's multi-tenant app registered in the platform's tenant.
    customer = admin("POST", "tenants", {"display_name": "Customer"})
    app = admin("POST", "applications", {"home_tenant_id": boot["tenant_id"], "display_name": "atrest platform",
                                         "multi_tenant": True, "create_service_principal": True})
    v = {
        "TENANT": customer["tenant_id"], "SUB": customer["subscription_id"], "APP": app["app_id"],
        "PLATFORM_TENANT": boot["tenant_id"], "PLATFORM_ADMIN": boot["client_id"],
        "PLATFORM_ADMIN_SECRET": boot["client_secret"], "CUSTOMER_ADMIN": customer["client_id"],
        "CUSTOMER_SECRET": customer["client_secret"],
        "RG": RG, "POLICY_KV": POLICY_KV, "RBAC_KV": RBAC_KV, "KEY": KEY,
    }
    v["RBAC_KV_ID"] = f"/subscriptions/{v['SUB']}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{RBAC_KV}"
    v["POLICY_KV_ID"] = f"/subscriptions/{v['SUB']}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{POLICY_KV}"

    # The customer's admin logs in with az, and creates the group and the two vaults with az.
    _, out = run("az login --service-principal -u {CUSTOMER_ADMIN} -p \"$CUSTOMER_SECRET\" --tenant {TENANT}", v)
    assert [s["id"] for s in js(out)] == [v["SUB"]], out
    _, out = run("az group create --name {RG} --location eastus", v)
    assert js(out)["properties"]["provisioningState"] == "Succeeded", out
    _, out = run("az keyvault create --name {POLICY_KV} --resource-group {RG} --location eastus "
                 "--enable-rbac-authorization false", v)
    assert js(out)["properties"]["enableRbacAuthorization"] is False, out
    _, out = run("az keyvault create --name {RBAC_KV} --resource-group {RG} --location eastus "
                 "--enable-rbac-authorization true", v)
    assert js(out)["id"] == v["RBAC_KV_ID"], out
    # A private endpoint to the RBAC vault whose connection waits for the vault owner's approval,
    # as the data nodes' private networking needs (Azure creates it from the endpoint's side).
    v["PE_CONNECTION"] = "atrest-nodes-pe"
    pe = admin("POST", "private-endpoints", {"vault": RBAC_KV, "connectionName": v["PE_CONNECTION"]})
    assert pe["connectionStatus"] == "Pending", pe
    return v


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_step(step, values):
    filled, out = run(step.cmd, values)
    kept = {name: get(out) for name, get in step.keep.items()}
    try:
        step.check(out, values)
    except (AssertionError, pytest.fail.Exception) as e:
        message = redact(redact(f"`{filled}` printed something else ({step.source}):\n{e}", values), kept)
        raise AssertionError(message) from None
    values.update(kept)


# --------------------------------------------------------------------------------------------
# Every az command in atrest's source is run by some step
# --------------------------------------------------------------------------------------------

# In Rust source a command ends at the string's quote or a backtick; in a step, at a backtick.
AZ_IN_SOURCE = re.compile(r"\baz ((?:ad|account|role|keyvault|login|group)\b[^`\"\n]*)")
AZ_IN_STEP = re.compile(r"\baz ((?:ad|account|role|keyvault|login|group)\b[^`\n]*)")


def command_forms(text, pattern=AZ_IN_SOURCE):
    """(subcommand path, flags) of each `az ...` in `text`; a `$(az ...)` inside counts apart."""
    forms = []
    pieces = re.split(r"&&|\|\||;|\$\(", text)
    for m in (m for piece in pieces for m in pattern.finditer(piece)):
        body = m.group(1).split("$(")[0].split(")")[0]
        words = body.split()
        path = []
        for w in words:
            if re.fullmatch(r"[a-z][a-z-]*", w):
                path.append(w)
            else:
                break
        flags = frozenset(w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z-]*(=.*)?", w))
        forms.append((" ".join(path), flags))
    return forms


def printed_commands():
    found = {}
    for rs in sorted((SOURCE_ROOT / "crates").glob("*/src/**/*.rs")):
        if "/emulator/" in str(rs):
            continue  # the emulator quotes az's wire calls in comments; it prints no fixes
        for n, line in enumerate(rs.read_text().splitlines(), 1):
            if line.strip().startswith("//"):
                continue
            for form in command_forms(line):
                found.setdefault(form, f"{rs.relative_to(SOURCE_ROOT)}:{n}")
    return found


def test_every_az_command_atrest_prints_is_run():
    run_forms = [f for s in STEPS for f in command_forms(s.cmd, AZ_IN_STEP)]
    missing, not_run = [], []
    for (path, flags), where in sorted(printed_commands().items()):
        if not path:
            continue
        if any(p == path and flags <= f for p, f in run_forms):
            continue
        if any(path.startswith(k) for k in NOT_RUN):
            reason = next(v for k, v in NOT_RUN.items() if path.startswith(k))
            not_run.append(f"not run ({reason}): {where}: az {path} {' '.join(sorted(flags))}")
            continue
        missing.append(f"{where}: az {path} {' '.join(sorted(flags))}")
    for line in not_run:
        print(line)
    assert not missing, "atrest prints az commands that no step of tests/azcli runs; add a Step:\n" + "\n".join(missing)
