//! The store's behaviour, one suite run against both backends.
//!
//! Each test is written once in `suite/` as `async fn(TestDb)` and instantiated twice below: in
//! `sqlite::` on a temp file and in `postgres::` on a fresh database of a throwaway PostgreSQL
//! cluster that this binary starts itself (see `atrest_store::testing`). A test that needs several
//! replicas opens several `Store`s on its database.

mod suite;
mod support;

macro_rules! on_both_backends {
    ($($module:ident :: $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    crate::suite::$module::$name(crate::support::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    crate::suite::$module::$name(crate::support::TestDb::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    tenancy::organizations_and_groups_round_trip,
    tenancy::group_names_are_unique_per_organization,
    tenancy::deleting_a_group_removes_everything_it_owns,
    principals::api_keys_round_trip_with_roles,
    principals::duplicate_public_key_conflicts_and_leaves_nothing_behind,
    principals::roles_cannot_bind_a_project_of_another_organization,
    principals::service_accounts_and_their_access_tokens,
    principals::digest_nonce_counts_are_accepted_once,
    principals::concurrent_nonce_counts_are_accepted_once_across_stores,
    cloud_access::cloud_provider_access_roles_round_trip,
    cloud_access::duplicate_service_principal_in_a_project_conflicts,
    cloud_access::a_role_in_use_cannot_be_deleted,
    ear::ear_config_round_trip_with_versions,
    ear::stale_ear_writes_change_nothing,
    ear::concurrent_ear_writes_exactly_one_wins,
    ear::migration_to_secretless_removes_static_credentials_in_the_same_transaction,
    ear::failed_migration_keeps_static_credentials,
    ear::validation_results_are_recorded_once_per_status_version,
    ear::events_are_listed_newest_first_with_paging,
    replicas::lease_is_exclusive_renewable_and_taken_over_when_expired,
    replicas::lease_has_one_holder_at_a_time_across_stores,
    replicas::due_revalidations_are_claimed_by_exactly_one_store,
    replicas::revalidation_on_read_is_rate_limited_across_stores,
    replicas::writes_through_one_store_are_visible_through_another,
    replicas::reopening_and_concurrent_opens_apply_migrations_once,
    replicas::shared_tokens_are_replaced_deleted_by_their_digest_and_purged_when_expired,
    private_endpoints::ear_private_endpoints_round_trip,
    private_endpoints::one_private_endpoint_per_region_per_project,
    private_endpoints::private_endpoint_transitions_apply_only_from_their_state,
    private_endpoints::private_endpoint_deletion_is_refused_while_initiating,
    private_endpoints::private_endpoint_changes_apply_once_across_stores,
    clusters::clusters_round_trip_with_unique_names,
    clusters::join_tokens_are_single_use_and_expire,
    clusters::concurrent_joins_with_one_token_exactly_one_succeeds,
    clusters::reports_derive_the_cluster_state_with_events_in_one_transaction,
    clusters::deletion_waits_for_the_last_node_and_revoked_nodes_are_refused,
    clusters::revoked_nodes_cannot_report_and_data_credentials_round_trip,
);
