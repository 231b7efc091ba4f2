//! Schema migrations, embedded in the binary, one directory per dialect.
//!
//! `migrations/sqlite/NNNN_name.sql` and `migrations/postgres/NNNN_name.sql` describe the same
//! schema in each dialect. They are compiled in with `include_str!` (rather than `sqlx::migrate!`,
//! which needs the `macros` feature and its second build of both drivers) and applied by sqlx's
//! migrator at [`crate::Store::open`]. sqlx records applied versions with a checksum in
//! `_sqlx_migrations`, so reopening is a no-op and an edited, already-applied migration is refused.
//! On PostgreSQL the migrator takes an advisory lock, so replicas starting together are safe.
//!
//! To add a migration: add the file to **both** directories with the next number and list it in
//! [`SQLITE`] and [`POSTGRES`]. A unit test fails if a file is present but not listed.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// (version, description, SQL) for SQLite.
const SQLITE: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "ear_private_endpoints", include_str!("../migrations/sqlite/0002_ear_private_endpoints.sql")),
    (3, "kek_canary", include_str!("../migrations/sqlite/0003_kek_canary.sql")),
    (4, "clusters_nodes", include_str!("../migrations/sqlite/0004_clusters_nodes.sql")),
    (5, "private_networking", include_str!("../migrations/sqlite/0005_private_networking.sql")),
    (6, "shared_tokens", include_str!("../migrations/sqlite/0006_shared_tokens.sql")),
];

/// (version, description, SQL) for PostgreSQL.
const POSTGRES: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "ear_private_endpoints", include_str!("../migrations/postgres/0002_ear_private_endpoints.sql")),
    (3, "kek_canary", include_str!("../migrations/postgres/0003_kek_canary.sql")),
    (4, "clusters_nodes", include_str!("../migrations/postgres/0004_clusters_nodes.sql")),
    (5, "private_networking", include_str!("../migrations/postgres/0005_private_networking.sql")),
    (6, "shared_tokens", include_str!("../migrations/postgres/0006_shared_tokens.sql")),
];

fn migrator(list: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        list.iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

pub(crate) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

pub(crate) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dialect: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dialect);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        names.sort();
        names
    }

    fn listed(list: &[(i64, &str, &str)]) -> Vec<String> {
        list.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect()
    }

    #[test]
    fn every_migration_file_is_listed_for_both_dialects() {
        assert_eq!(files("sqlite"), listed(SQLITE));
        assert_eq!(files("postgres"), listed(POSTGRES));
        assert_eq!(listed(SQLITE), listed(POSTGRES), "the dialects must have the same migrations");
    }
}
