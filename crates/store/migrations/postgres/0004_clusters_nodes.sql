-- Clusters and data nodes, PostgreSQL dialect. Keep in step with ../sqlite/0004_clusters_nodes.sql.
-- Clusters (the Atlas clusters resource) and their data nodes: join tokens, node credentials, the
-- nodes' last status reports and the clusters' data credentials.
--
-- Credentials are stored only as SHA-256 of the whole credential (join tokens, node credentials,
-- data credentials); the control plane shows each once, when it creates it.

CREATE TABLE clusters (
    id                          TEXT PRIMARY KEY,
    group_id                    TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    name                        TEXT NOT NULL,
    -- The Atlas body as the client sent it (minus read-only attributes), echoed back exactly.
    body                        TEXT NOT NULL,
    encryption_at_rest_provider TEXT NOT NULL CHECK (encryption_at_rest_provider IN ('NONE', 'AZURE')),
    node_count                  BIGINT NOT NULL CHECK (node_count > 0),
    paused                      BOOLEAN NOT NULL,
    state_name                  TEXT NOT NULL,
    deleting                    BOOLEAN NOT NULL,
    create_date                 BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    -- Bumped by every change of the cluster; part of the nodes' config ETag.
    version                     BIGINT NOT NULL,
    -- Atlas: a cluster name is unique within its project.
    UNIQUE (group_id, name)
);

CREATE TABLE join_tokens (
    token_sha256  BYTEA PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    group_id      TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    cluster_id    TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    -- Set once, by the conditional UPDATE that spends the token (single use).
    used_at       BIGINT,
    used_by_node  TEXT
);

CREATE TABLE nodes (
    id                     TEXT PRIMARY KEY,
    cluster_id             TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    credential_sha256      BYTEA NOT NULL,
    data_url               TEXT NOT NULL,
    joined_at              BIGINT NOT NULL,
    revoked_at             BIGINT,
    -- Grows on "Try Again" for the node's project: the node checks at once when it changes.
    check_nonce            BIGINT NOT NULL,
    -- Grows on POST .../nodes/{id}:rotateMasterKey.
    master_key_rotation_nonce BIGINT NOT NULL,
    -- The last status report (NULL before the first).
    state                  TEXT,
    key_identifier         TEXT,
    key_version            TEXT,
    auth_mode              TEXT,
    master_key_generation  BIGINT,
    config_etag            TEXT,
    via                    TEXT,
    -- {kind, azureCode, message, fix} as JSON text, or NULL.
    last_error             TEXT,
    last_check_at          BIGINT,
    last_report_at         BIGINT
);
CREATE INDEX nodes_by_cluster ON nodes (cluster_id, joined_at);

CREATE TABLE data_credentials (
    id                 TEXT PRIMARY KEY,
    cluster_id         TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    credential_sha256  BYTEA NOT NULL UNIQUE,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT
);
CREATE INDEX data_credentials_by_cluster ON data_credentials (cluster_id, created_at);
