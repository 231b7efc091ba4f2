-- atrest control-plane schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_initial.sql:
-- the same tables, columns, constraints and indexes; only types and identity columns differ.
--
-- Conventions (both dialects):
-- * ids are 24 lowercase hex characters (Atlas ObjectId shape), stored as TEXT;
-- * instants are BIGINT milliseconds since the Unix epoch (UTC), so comparisons such as
--   "expires_at <= now" mean the same thing in both dialects and the caller supplies "now";
-- * every child row cascades from its group or organization, so deleting a group leaves nothing
--   behind.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE groups (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- Atlas: a project name is unique within its organization.
    UNIQUE (org_id, name),
    -- Target of composite foreign keys that pin a role binding to the principal's organization.
    UNIQUE (id, org_id)
);

-- A principal is anything that authenticates: an API key (id = the key's 24-hex id) or a service
-- account (id = its client id). Role bindings hang off this table so both kinds share them.
CREATE TABLE principals (
    id      TEXT PRIMARY KEY,
    org_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind    TEXT NOT NULL CHECK (kind IN ('API_KEY', 'SERVICE_ACCOUNT')),
    UNIQUE (id, org_id)
);

CREATE TABLE api_keys (
    id                     TEXT PRIMARY KEY REFERENCES principals (id) ON DELETE CASCADE,
    public_key             TEXT NOT NULL UNIQUE,
    -- HA1 = MD5(public:realm:private), encrypted by the control plane: never in clear here.
    digest_ha1_ciphertext  BYTEA NOT NULL,
    description            TEXT NOT NULL,
    created_at             BIGINT NOT NULL
);

CREATE TABLE service_accounts (
    client_id      TEXT PRIMARY KEY REFERENCES principals (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    secret_sha256  BYTEA NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE principal_org_roles (
    principal_id  TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    role          TEXT NOT NULL,
    PRIMARY KEY (principal_id, role)
);

-- org_id is repeated so that two composite foreign keys can require the group and the principal
-- to belong to the same organization: a key can never be bound to another organization's project.
CREATE TABLE principal_group_roles (
    principal_id  TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    role          TEXT NOT NULL,
    PRIMARY KEY (principal_id, group_id, role),
    FOREIGN KEY (principal_id, org_id) REFERENCES principals (id, org_id) ON DELETE CASCADE,
    FOREIGN KEY (group_id, org_id) REFERENCES groups (id, org_id) ON DELETE CASCADE
);
CREATE INDEX principal_group_roles_by_group ON principal_group_roles (group_id);

-- OAuth access tokens are stored only as SHA-256 digests.
CREATE TABLE access_tokens (
    token_sha256  BYTEA PRIMARY KEY,
    client_id     TEXT NOT NULL REFERENCES service_accounts (client_id) ON DELETE CASCADE,
    issued_at     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX access_tokens_by_expiry ON access_tokens (expires_at);

-- HTTP Digest nonces shared by every replica: the highest nonce count accepted so far.
CREATE TABLE digest_nonces (
    nonce       TEXT PRIMARY KEY,
    highest_nc  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX digest_nonces_by_expiry ON digest_nonces (expires_at);

CREATE TABLE cloud_provider_access_roles (
    id                    TEXT PRIMARY KEY,
    group_id              TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    provider              TEXT NOT NULL CHECK (provider IN ('AZURE')),
    atlas_azure_app_id    TEXT NOT NULL,
    service_principal_id  TEXT NOT NULL,
    tenant_id             TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    last_updated_at       BIGINT NOT NULL,
    -- Target of the EAR configuration's foreign key: a roleId must belong to the same group.
    UNIQUE (group_id, id)
);
-- One registration per service principal per project. GUIDs compare case-insensitively, while
-- the columns keep the spelling the client sent (it is echoed back exactly).
CREATE UNIQUE INDEX cloud_provider_access_roles_unique_sp
    ON cloud_provider_access_roles (group_id, lower(tenant_id), lower(service_principal_id));

-- The Azure Key Vault block of a group's Encryption at Rest configuration. A row exists only
-- while the provider is configured ({enabled:false} deletes it).
CREATE TABLE ear_azure_key_vault (
    group_id                    TEXT PRIMARY KEY REFERENCES groups (id) ON DELETE CASCADE,
    enabled                     BOOLEAN NOT NULL,
    -- Secretless mode ...
    role_id                     TEXT,
    -- ... or the legacy static credentials (the secret encrypted by the control plane).
    client_id                   TEXT,
    tenant_id                   TEXT,
    static_secret_ciphertext    BYTEA,
    subscription_id             TEXT,
    resource_group_name         TEXT,
    key_vault_name              TEXT,
    key_identifier              TEXT,
    azure_environment           TEXT,
    require_private_networking  BOOLEAN NOT NULL,
    valid                       BOOLEAN NOT NULL,
    validation_state            TEXT NOT NULL
        CHECK (validation_state IN ('pending', 'valid', 'invalid', 'unreachable')),
    validation_detail           TEXT,
    key_version_in_use          TEXT,
    last_validated_at           BIGINT,
    -- Bumped by every configuration write (the etag of the configuration).
    config_version              BIGINT NOT NULL,
    -- Bumped by every validation result, so two concurrent validations cannot both record.
    status_version              BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    -- Background revalidation schedule, claimed atomically by one replica.
    next_validation_at          BIGINT NOT NULL,
    -- Last time any replica claimed a validation of this group (rate-limits revalidation on read).
    validation_claimed_at       BIGINT,
    -- Exactly one mode at rest: secretless (role only) or static (all three credentials).
    -- A migration to secretless therefore cannot leave static credentials behind.
    CHECK (
        (role_id IS NOT NULL AND client_id IS NULL AND tenant_id IS NULL
            AND static_secret_ciphertext IS NULL)
        OR (role_id IS NULL AND client_id IS NOT NULL AND tenant_id IS NOT NULL
            AND static_secret_ciphertext IS NOT NULL)
    ),
    -- A role in use cannot be deleted (default NO ACTION: checked at the end of the statement,
    -- so deleting the whole group still cascades through both tables).
    FOREIGN KEY (group_id, role_id) REFERENCES cloud_provider_access_roles (group_id, id)
);
CREATE INDEX ear_azure_key_vault_by_next_validation ON ear_azure_key_vault (next_validation_at);
CREATE INDEX ear_azure_key_vault_by_role ON ear_azure_key_vault (role_id);

CREATE TABLE events (
    -- Insertion order breaks ties between events created in the same millisecond.
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    group_id         TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    event_type_name  TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    payload          TEXT NOT NULL
);
CREATE INDEX events_by_group_newest_first ON events (group_id, created_at DESC, seq DESC);

-- Named leases shared between replicas (e.g. the revalidation scheduler).
CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    acquired_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
