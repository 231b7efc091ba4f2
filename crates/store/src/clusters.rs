//! Clusters (the Atlas clusters resource) and their data nodes: join tokens, node credentials,
//! the nodes' last status reports, and data credentials.
//!
//! # Rules
//! - Credentials arrive as SHA-256 of the whole credential; the store never sees one in clear.
//! - A join token is spent by one conditional `UPDATE ... WHERE used_at IS NULL AND expires_at > now`
//!   in the same transaction that creates the node, so two concurrent joins with one token
//!   cannot both succeed, and a failed node insert leaves the token unspent.
//! - A status report, the cluster state derived from it and its events are written in one
//!   transaction, with the cluster row locked (PostgreSQL `FOR UPDATE`; SQLite's `BEGIN
//!   IMMEDIATE`), so concurrent reports of one cluster derive the state one after the other.
//! - `version` on the cluster is bumped by every change of the cluster (its part of the nodes'
//!   config ETag); `check_nonce` and `master_key_rotation_nonce` on a node grow only.

use time::OffsetDateTime;

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result, StoreError, corrupt};
use crate::events::insert_events;
use crate::ids::{ClusterId, DataCredentialId, GroupId, JoinTokenId, NodeId};
use crate::model::Event;
use crate::{BeginWrite, Store, with_backend, with_dialect};

/// Which key provider encrypts a cluster's data (Atlas `encryptionAtRestProvider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterEarProvider {
    /// A platform-held key.
    None,
    /// The project's Azure Key Vault key.
    Azure,
}

impl ClusterEarProvider {
    /// The Atlas spelling (`NONE`, `AZURE`), also the stored one.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterEarProvider::None => "NONE",
            ClusterEarProvider::Azure => "AZURE",
        }
    }

    /// Parses the Atlas spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NONE" => Some(ClusterEarProvider::None),
            "AZURE" => Some(ClusterEarProvider::Azure),
            _ => None,
        }
    }
}

/// A cluster as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: ClusterId,
    pub group_id: GroupId,
    /// Unique per project.
    pub name: String,
    /// The Atlas body as the client sent it (read-only attributes removed), JSON text.
    pub body: String,
    pub encryption_at_rest_provider: ClusterEarProvider,
    pub node_count: u32,
    pub paused: bool,
    /// Atlas `stateName` (`CREATING`, `IDLE`, `UPDATING`, `DELETING`, ...), decided by the control plane.
    pub state_name: String,
    pub deleting: bool,
    pub create_date: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Bumped by every change; 1 at creation.
    pub version: i64,
}

/// A change of a cluster's settings for [`Store::update_cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUpdate {
    pub body: String,
    pub encryption_at_rest_provider: ClusterEarProvider,
    pub node_count: u32,
    pub paused: bool,
    pub state_name: String,
    pub now: OffsetDateTime,
}

/// What [`Store::request_cluster_deletion`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterDeletion {
    /// No node was active: the cluster is gone.
    Removed,
    /// Nodes are still active: the cluster is `DELETING` until the last one is revoked.
    Deleting(Cluster),
}

/// A join token as stored (its hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: JoinTokenId,
    pub token_sha256: [u8; 32],
    pub group_id: GroupId,
    pub cluster_id: ClusterId,
    /// Who made it (an API key's public key or a service account's client id; not secret).
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A node about to join, for [`Store::join_cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub id: NodeId,
    pub credential_sha256: [u8; 32],
    pub data_url: String,
}

/// The outcome of [`Store::join_cluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The token was spent and the node created.
    Joined { node: Box<Node>, cluster: Box<Cluster> },
    /// No token has this hash.
    UnknownToken,
    /// The token was spent already (at that instant).
    UsedToken(OffsetDateTime),
    /// The token expired (at that instant).
    ExpiredToken(OffsetDateTime),
    /// The cluster is being deleted.
    ClusterDeleting,
}

/// A node's last status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// `LOCKED`, `SERVING`, `DEGRADED` or `SHUT_DOWN`, as validated by the control plane.
    pub state: String,
    pub key_identifier: Option<String>,
    pub key_version: Option<String>,
    pub auth_mode: Option<String>,
    pub master_key_generation: Option<i64>,
    pub config_etag: Option<String>,
    pub via: Option<String>,
    /// `{kind, azureCode, message, fix}` as JSON text. Never a secret.
    pub last_error: Option<String>,
    pub last_check_at: Option<OffsetDateTime>,
    pub reported_at: OffsetDateTime,
}

/// A data node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub cluster_id: ClusterId,
    pub credential_sha256: [u8; 32],
    pub data_url: String,
    pub joined_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub check_nonce: i64,
    pub master_key_rotation_nonce: i64,
    /// `None` before the first report.
    pub report: Option<NodeReport>,
}

/// A cluster's data credential as stored (its hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCredential {
    pub id: DataCredentialId,
    pub cluster_id: ClusterId,
    pub credential_sha256: [u8; 32],
    pub created_at: OffsetDateTime,
}

macro_rules! cluster_columns {
    () => {
        "id, group_id, name, body, encryption_at_rest_provider, node_count, paused, state_name, deleting, \
         create_date, updated_at, version"
    };
}

macro_rules! node_columns {
    () => {
        "id, cluster_id, credential_sha256, data_url, joined_at, revoked_at, check_nonce, master_key_rotation_nonce, \
         state, key_identifier, key_version, auth_mode, master_key_generation, config_etag, via, last_error, \
         last_check_at, last_report_at"
    };
}

const CLUSTER_NOT_FOUND: &str = "cluster in this group";
const NODE_NOT_FOUND: &str = "active node in this cluster";

fn cluster_from<R: Cols>(row: &R) -> Result<Cluster> {
    let provider = row.text("encryption_at_rest_provider")?;
    Ok(Cluster {
        id: ClusterId::parse(&row.text("id")?).map_err(corrupt)?,
        group_id: GroupId::parse(&row.text("group_id")?).map_err(corrupt)?,
        name: row.text("name")?,
        body: row.text("body")?,
        encryption_at_rest_provider: ClusterEarProvider::parse(&provider)
            .ok_or_else(|| corrupt(format_args!("encryption at rest provider {provider}")))?,
        node_count: u32::try_from(row.int("node_count")?).map_err(corrupt)?,
        paused: row.flag("paused")?,
        state_name: row.text("state_name")?,
        deleting: row.flag("deleting")?,
        create_date: row.instant("create_date")?,
        updated_at: row.instant("updated_at")?,
        version: row.int("version")?,
    })
}

fn node_from<R: Cols>(row: &R) -> Result<Node> {
    let report = match (row.opt_text("state")?, row.opt_instant("last_report_at")?) {
        (Some(state), Some(reported_at)) => Some(NodeReport {
            state,
            key_identifier: row.opt_text("key_identifier")?,
            key_version: row.opt_text("key_version")?,
            auth_mode: row.opt_text("auth_mode")?,
            master_key_generation: row.opt_int("master_key_generation")?,
            config_etag: row.opt_text("config_etag")?,
            via: row.opt_text("via")?,
            last_error: row.opt_text("last_error")?,
            last_check_at: row.opt_instant("last_check_at")?,
            reported_at,
        }),
        _ => None,
    };
    Ok(Node {
        id: NodeId::parse(&row.text("id")?).map_err(corrupt)?,
        cluster_id: ClusterId::parse(&row.text("cluster_id")?).map_err(corrupt)?,
        credential_sha256: row.digest("credential_sha256")?,
        data_url: row.text("data_url")?,
        joined_at: row.instant("joined_at")?,
        revoked_at: row.opt_instant("revoked_at")?,
        check_nonce: row.int("check_nonce")?,
        master_key_rotation_nonce: row.int("master_key_rotation_nonce")?,
        report,
    })
}

fn data_credential_from<R: Cols>(row: &R) -> Result<DataCredential> {
    Ok(DataCredential {
        id: DataCredentialId::parse(&row.text("id")?).map_err(corrupt)?,
        cluster_id: ClusterId::parse(&row.text("cluster_id")?).map_err(corrupt)?,
        credential_sha256: row.digest("credential_sha256")?,
        created_at: row.instant("created_at")?,
    })
}

impl Store {
    /// Records a new cluster. `Conflict` if the project has a cluster of that name (deleting
    /// ones included); `NotFound` if the project does not exist.
    pub async fn create_cluster(&self, c: &Cluster) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(
                "INSERT INTO clusters (",
                cluster_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ))
            .bind(c.id.as_str())
            .bind(c.group_id.as_str())
            .bind(&c.name)
            .bind(&c.body)
            .bind(c.encryption_at_rest_provider.as_str())
            .bind(i64::from(c.node_count))
            .bind(c.paused)
            .bind(&c.state_name)
            .bind(c.deleting)
            .bind(to_millis(c.create_date))
            .bind(to_millis(c.updated_at))
            .bind(c.version)
            .execute(pool)
            .await
            .map_err(|e| Meaning::conflict("cluster name in this group").and_missing("group").classify(e))?;
        });
        Ok(())
    }

    /// The cluster `name` of `group`. `NotFound` if absent.
    pub async fn get_cluster(&self, group: &GroupId, name: &str) -> Result<Cluster> {
        with_backend!(self, |pool| {
            let row =
                sqlx::query(concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE group_id = $1 AND name = $2"))
                    .bind(group.as_str())
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
            row.as_ref().map(cluster_from).transpose()?.ok_or(StoreError::NotFound { what: CLUSTER_NOT_FOUND })
        })
    }

    /// The cluster `id`, whatever its project. `NotFound` if absent.
    pub async fn get_cluster_by_id(&self, id: &ClusterId) -> Result<Cluster> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(cluster_from).transpose()?.ok_or(StoreError::NotFound { what: "cluster" })
        })
    }

    /// Every cluster of a project, oldest first.
    pub async fn list_clusters(&self, group: &GroupId) -> Result<Vec<Cluster>> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(
                "SELECT ",
                cluster_columns!(),
                " FROM clusters WHERE group_id = $1 ORDER BY create_date, id"
            ))
            .bind(group.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(cluster_from)
            .collect()
        })
    }

    /// Replaces the settings of cluster `id` if it is still at `expected_version` and not
    /// deleting; bumps the version. `StaleWrite` otherwise (nothing changed).
    pub async fn update_cluster(&self, id: &ClusterId, expected_version: i64, u: &ClusterUpdate) -> Result<Cluster> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!(
                "UPDATE clusters SET body = $2, encryption_at_rest_provider = $3, node_count = $4, paused = $5, \
                 state_name = $6, updated_at = $7, version = version + 1 \
                 WHERE id = $1 AND version = $8 AND NOT deleting RETURNING ",
                cluster_columns!()
            ))
            .bind(id.as_str())
            .bind(&u.body)
            .bind(u.encryption_at_rest_provider.as_str())
            .bind(i64::from(u.node_count))
            .bind(u.paused)
            .bind(&u.state_name)
            .bind(to_millis(u.now))
            .bind(expected_version)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(cluster_from).transpose()?.ok_or(StoreError::StaleWrite)
        })
    }

    /// Asks for cluster `id` to be deleted, in one transaction: removed at once if it has no
    /// active node, otherwise marked deleting (`state_name = DELETING`) until the last node is
    /// revoked ([`Store::revoke_node`] then removes it). `NotFound` if absent.
    pub async fn request_cluster_deletion(&self, id: &ClusterId, now: OffsetDateTime) -> Result<ClusterDeletion> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let active = sqlx::query("SELECT COUNT(*) AS n FROM nodes WHERE cluster_id = $1 AND revoked_at IS NULL")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?
                .int("n")?;
            let outcome = if active == 0 {
                let n = sqlx::query("DELETE FROM clusters WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
                if n.rows_affected() == 0 {
                    return Err(StoreError::NotFound { what: "cluster" });
                }
                ClusterDeletion::Removed
            } else {
                let row = sqlx::query(concat!(
                    "UPDATE clusters SET deleting = $2, state_name = 'DELETING', updated_at = $3, version = version + 1 \
                     WHERE id = $1 RETURNING ",
                    cluster_columns!()
                ))
                .bind(id.as_str())
                .bind(true)
                .bind(to_millis(now))
                .fetch_optional(&mut *tx)
                .await?;
                ClusterDeletion::Deleting(
                    row.as_ref().map(cluster_from).transpose()?.ok_or(StoreError::NotFound { what: "cluster" })?,
                )
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// The names of the project's clusters whose data is under the project's Azure key
    /// (deleting ones included: their nodes still use it).
    pub async fn clusters_using_azure_key(&self, group: &GroupId) -> Result<Vec<String>> {
        with_backend!(self, |pool| {
            sqlx::query(
                "SELECT name FROM clusters WHERE group_id = $1 AND encryption_at_rest_provider = 'AZURE' ORDER BY name",
            )
            .bind(group.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.text("name"))
            .collect()
        })
    }

    /// Records a join token (its hash). `NotFound` if the cluster or project is gone.
    pub async fn create_join_token(&self, t: &JoinToken) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO join_tokens (token_sha256, id, group_id, cluster_id, created_by, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(t.token_sha256.as_slice())
            .bind(t.id.as_str())
            .bind(t.group_id.as_str())
            .bind(t.cluster_id.as_str())
            .bind(&t.created_by)
            .bind(to_millis(t.created_at))
            .bind(to_millis(t.expires_at))
            .execute(pool)
            .await
            .map_err(|e| Meaning::conflict("join token").and_missing("cluster").classify(e))?;
        });
        Ok(())
    }

    /// Spends the join token whose hash is `token_sha256` and creates `node` in its cluster, in
    /// one transaction. Exactly one of several concurrent calls with one token joins.
    pub async fn join_cluster(
        &self,
        token_sha256: &[u8; 32],
        node: &NewNode,
        now: OffsetDateTime,
    ) -> Result<JoinOutcome> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let spent = sqlx::query(
                "UPDATE join_tokens SET used_at = $2, used_by_node = $3 \
                 WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2 RETURNING cluster_id",
            )
            .bind(token_sha256.as_slice())
            .bind(to_millis(now))
            .bind(node.id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(spent) = spent else {
                let row = sqlx::query("SELECT used_at, expires_at FROM join_tokens WHERE token_sha256 = $1")
                    .bind(token_sha256.as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return Ok(match row {
                    None => JoinOutcome::UnknownToken,
                    Some(r) => match r.opt_instant("used_at")? {
                        Some(used) => JoinOutcome::UsedToken(used),
                        None => JoinOutcome::ExpiredToken(r.instant("expires_at")?),
                    },
                });
            };
            let cluster_id = spent.text("cluster_id")?;
            let cluster = sqlx::query(concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE id = $1"))
                .bind(&cluster_id)
                .fetch_one(&mut *tx)
                .await?;
            let cluster = cluster_from(&cluster)?;
            if cluster.deleting {
                tx.rollback().await?;
                return Ok(JoinOutcome::ClusterDeleting);
            }
            let row = sqlx::query(concat!(
                "INSERT INTO nodes (id, cluster_id, credential_sha256, data_url, joined_at, check_nonce, \
                 master_key_rotation_nonce) VALUES ($1, $2, $3, $4, $5, 0, 0) RETURNING ",
                node_columns!()
            ))
            .bind(node.id.as_str())
            .bind(&cluster_id)
            .bind(node.credential_sha256.as_slice())
            .bind(&node.data_url)
            .bind(to_millis(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Meaning::conflict("node id").and_missing("cluster").classify(e))?;
            let node = node_from(&row)?;
            tx.commit().await?;
            Ok(JoinOutcome::Joined { node: Box::new(node), cluster: Box::new(cluster) })
        })
    }

    /// The node `id`, revoked or not. `NotFound` if absent (or its cluster was removed).
    pub async fn get_node(&self, id: &NodeId) -> Result<Node> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!("SELECT ", node_columns!(), " FROM nodes WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(node_from).transpose()?.ok_or(StoreError::NotFound { what: "node" })
        })
    }

    /// The active (not revoked) nodes of a cluster, in joining order.
    pub async fn list_nodes(&self, cluster: &ClusterId) -> Result<Vec<Node>> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(
                "SELECT ",
                node_columns!(),
                " FROM nodes WHERE cluster_id = $1 AND revoked_at IS NULL ORDER BY joined_at, id"
            ))
            .bind(cluster.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(node_from)
            .collect()
        })
    }

    /// Revokes node `node` of `cluster` at once, in one transaction; a deleting cluster whose
    /// last active node this was is removed. Returns whether the cluster was removed.
    /// `NotFound` if the node is not an active node of that cluster.
    pub async fn revoke_node(&self, cluster: &ClusterId, node: &NodeId, now: OffsetDateTime) -> Result<bool> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE nodes SET revoked_at = $3 WHERE id = $1 AND cluster_id = $2 AND revoked_at IS NULL",
            )
            .bind(node.as_str())
            .bind(cluster.as_str())
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?;
            if n.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: NODE_NOT_FOUND });
            }
            let removed = sqlx::query(
                "DELETE FROM clusters WHERE id = $1 AND deleting AND NOT EXISTS \
                 (SELECT 1 FROM nodes WHERE cluster_id = $1 AND revoked_at IS NULL)",
            )
            .bind(cluster.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !removed {
                sqlx::query("UPDATE clusters SET version = version + 1 WHERE id = $1")
                    .bind(cluster.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Asks active node `node` of `cluster` to rotate its master key (bumps its rotation nonce).
    /// `NotFound` if it is not an active node of that cluster.
    pub async fn request_master_key_rotation(&self, cluster: &ClusterId, node: &NodeId) -> Result<Node> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!(
                "UPDATE nodes SET master_key_rotation_nonce = master_key_rotation_nonce + 1 \
                 WHERE id = $1 AND cluster_id = $2 AND revoked_at IS NULL RETURNING ",
                node_columns!()
            ))
            .bind(node.as_str())
            .bind(cluster.as_str())
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(node_from).transpose()?.ok_or(StoreError::NotFound { what: NODE_NOT_FOUND })
        })
    }

    /// "Try Again" for a project: every active node of its clusters checks at once (bumps their
    /// check nonces). Returns how many nodes.
    pub async fn request_node_checks(&self, group: &GroupId) -> Result<u64> {
        Ok(with_backend!(self, |pool| {
            sqlx::query(
                "UPDATE nodes SET check_nonce = check_nonce + 1 WHERE revoked_at IS NULL AND cluster_id IN \
                 (SELECT id FROM clusters WHERE group_id = $1)",
            )
            .bind(group.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Records active node `node`'s status report, then asks `derive` for the cluster's new
    /// `state_name` and the events to record, given the cluster, the node's previous report and
    /// every active node of the cluster (this report included); writes both, all in one
    /// transaction with the cluster row locked. Returns the node and the cluster as stored.
    /// `NotFound` if the node is revoked or gone.
    pub async fn record_node_report<F>(&self, node: &NodeId, report: &NodeReport, derive: F) -> Result<(Node, Cluster)>
    where
        F: FnOnce(&Cluster, Option<&NodeReport>, &[Node]) -> (String, Vec<Event>),
    {
        with_dialect!(
            self,
            lock = (
                concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE id = $1"),
                concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE id = $1 FOR UPDATE")
            ),
            |pool| {
                let mut tx = pool.begin_write().await?;
                let before = sqlx::query(concat!(
                    "SELECT ",
                    node_columns!(),
                    " FROM nodes WHERE id = $1 AND revoked_at IS NULL"
                ))
                .bind(node.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let before =
                    before.as_ref().map(node_from).transpose()?.ok_or(StoreError::NotFound { what: "node" })?;
                let cluster = sqlx::query(lock).bind(before.cluster_id.as_str()).fetch_one(&mut *tx).await?;
                let cluster = cluster_from(&cluster)?;
                let row = sqlx::query(concat!(
                    "UPDATE nodes SET state = $2, key_identifier = $3, key_version = $4, auth_mode = $5, \
                     master_key_generation = $6, config_etag = $7, via = $8, last_error = $9, last_check_at = $10, \
                     last_report_at = $11 WHERE id = $1 RETURNING ",
                    node_columns!()
                ))
                .bind(node.as_str())
                .bind(&report.state)
                .bind(report.key_identifier.as_deref())
                .bind(report.key_version.as_deref())
                .bind(report.auth_mode.as_deref())
                .bind(report.master_key_generation)
                .bind(report.config_etag.as_deref())
                .bind(report.via.as_deref())
                .bind(report.last_error.as_deref())
                .bind(report.last_check_at.map(to_millis))
                .bind(to_millis(report.reported_at))
                .fetch_one(&mut *tx)
                .await?;
                let after = node_from(&row)?;
                let nodes = sqlx::query(concat!(
                    "SELECT ",
                    node_columns!(),
                    " FROM nodes WHERE cluster_id = $1 AND revoked_at IS NULL ORDER BY joined_at, id"
                ))
                .bind(cluster.id.as_str())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(node_from)
                .collect::<Result<Vec<_>>>()?;
                let (state_name, events) = derive(&cluster, before.report.as_ref(), &nodes);
                let cluster = if state_name != cluster.state_name {
                    let row = sqlx::query(concat!(
                        "UPDATE clusters SET state_name = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                        cluster_columns!()
                    ))
                    .bind(cluster.id.as_str())
                    .bind(&state_name)
                    .bind(to_millis(report.reported_at))
                    .fetch_one(&mut *tx)
                    .await?;
                    cluster_from(&row)?
                } else {
                    cluster
                };
                insert_events!(&events, &mut *tx);
                tx.commit().await?;
                Ok((after, cluster))
            }
        )
    }

    /// Records a data credential (its hash). `NotFound` if the cluster is gone.
    pub async fn create_data_credential(&self, c: &DataCredential) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO data_credentials (id, cluster_id, credential_sha256, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(c.id.as_str())
            .bind(c.cluster_id.as_str())
            .bind(c.credential_sha256.as_slice())
            .bind(to_millis(c.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| Meaning::conflict("data credential").and_missing("cluster").classify(e))?;
            sqlx::query("UPDATE clusters SET version = version + 1 WHERE id = $1")
                .bind(c.cluster_id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The cluster's data credentials that are not revoked, oldest first.
    pub async fn list_data_credentials(&self, cluster: &ClusterId) -> Result<Vec<DataCredential>> {
        with_backend!(self, |pool| {
            sqlx::query(
                "SELECT id, cluster_id, credential_sha256, created_at FROM data_credentials \
                 WHERE cluster_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
            )
            .bind(cluster.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(data_credential_from)
            .collect()
        })
    }

    /// Revokes data credential `id` of `cluster` (and bumps the cluster's version, so the nodes
    /// learn it). `NotFound` if it is not an unrevoked credential of that cluster.
    pub async fn revoke_data_credential(
        &self,
        cluster: &ClusterId,
        id: &DataCredentialId,
        now: OffsetDateTime,
    ) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE data_credentials SET revoked_at = $3 WHERE id = $1 AND cluster_id = $2 AND revoked_at IS NULL",
            )
            .bind(id.as_str())
            .bind(cluster.as_str())
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?;
            if n.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "data credential of this cluster" });
            }
            sqlx::query("UPDATE clusters SET version = version + 1 WHERE id = $1")
                .bind(cluster.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
