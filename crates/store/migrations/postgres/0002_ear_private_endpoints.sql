-- Encryption at Rest private endpoints, PostgreSQL dialect. Keep in step with
-- ../sqlite/0002_ear_private_endpoints.sql (same tables, columns, constraints and indexes).
--
-- One row per private endpoint a project asked for (POST .../encryptionAtRest/AZURE/privateEndpoints).
-- Status changes are conditional single-row UPDATEs (... WHERE status = <the state it leaves>), so
-- replicas advancing endpoints together apply each transition once.

CREATE TABLE ear_private_endpoints (
    id                                TEXT PRIMARY KEY,
    group_id                          TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    cloud_provider                    TEXT NOT NULL CHECK (cloud_provider IN ('AZURE')),
    -- Atlas region name (e.g. US_EAST_2), as validated by the control plane.
    region_name                       TEXT NOT NULL,
    status                            TEXT NOT NULL CHECK (status IN ('INITIATING', 'PENDING_ACCEPTANCE',
        'ACTIVE', 'FAILED', 'PENDING_RECREATION', 'DELETING')),
    error_message                     TEXT,
    private_endpoint_connection_name  TEXT,
    created_at                        BIGINT NOT NULL,
    updated_at                        BIGINT NOT NULL,
    -- Atlas: one private endpoint per region per project (until the old one is gone, DELETING included).
    -- Also serves listing a project's endpoints (group_id is its prefix).
    UNIQUE (group_id, cloud_provider, region_name)
);
-- The background job looks endpoints up by status across all projects.
CREATE INDEX ear_private_endpoints_by_status ON ear_private_endpoints (status, updated_at);
