-- The token tier the control plane's replicas share, postgres dialect. Keep in step with
-- ../sqlite/0006_shared_tokens.sql.
--
-- One row per (Entra authority, tenant, client, scope): the platform app's last access token
-- there, sealed with the KEK (never in clear), so that N replicas cost one Entra request per
-- token lifetime. `id` is a digest of the four parts; `sha256` is the token's digest, so a
-- refused token can be deleted without opening it. Who may fetch a key next is a row of
-- `leases` (name `token:<id>`).

CREATE TABLE shared_tokens (
    id           TEXT PRIMARY KEY,
    sealed       BYTEA NOT NULL,
    sha256       BYTEA NOT NULL,
    obtained_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
