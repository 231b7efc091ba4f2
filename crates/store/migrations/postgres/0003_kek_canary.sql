-- The key-encryption-key canary, postgres dialect. Keep in step with ../sqlite/0003_kek_canary.sql.
--
-- One row, written by the first control plane that starts on this store: a fixed value sealed
-- with its KEK, and the KEK's fingerprint (not secret: an HMAC of a fixed label under the KEK).
-- Every later start opens the canary with its own KEK and refuses to start if it does not open,
-- so a replica with another KEK cannot serve (its seals would be unreadable to the others).

CREATE TABLE kek_canary (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    sealed       BYTEA NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
