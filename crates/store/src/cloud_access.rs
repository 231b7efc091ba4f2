//! Cloud Provider Access roles: the Azure service principals a project registered, and whether
//! Encryption at Rest uses them.
//!
//! A role is "in use" while the project's Encryption at Rest configuration refers to it. That
//! reference is a foreign key, so the database itself refuses to delete a role in use, even if a
//! configuration naming it is committed by another replica between the caller's check and the
//! delete.

use std::collections::BTreeSet;

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result, StoreError, corrupt};
use crate::ids::{GroupId, RoleId};
use crate::model::{CloudProvider, CloudProviderAccessRole};
use crate::{Store, with_backend};

/// `SELECT <every column> FROM cloud_provider_access_roles`, as a literal for `concat!`.
macro_rules! select_roles {
    () => {
        "SELECT id, group_id, provider, atlas_azure_app_id, service_principal_id, tenant_id, created_at, \
         last_updated_at FROM cloud_provider_access_roles"
    };
}

fn role_from<R: Cols>(row: &R) -> Result<CloudProviderAccessRole> {
    let provider = match row.text("provider")?.as_str() {
        "AZURE" => CloudProvider::Azure,
        other => return Err(corrupt(format_args!("unknown provider {other}"))),
    };
    Ok(CloudProviderAccessRole {
        id: RoleId::parse(&row.text("id")?).map_err(corrupt)?,
        group_id: GroupId::parse(&row.text("group_id")?).map_err(corrupt)?,
        provider,
        atlas_azure_app_id: row.text("atlas_azure_app_id")?,
        service_principal_id: row.text("service_principal_id")?,
        tenant_id: row.text("tenant_id")?,
        created_at: row.instant("created_at")?,
        last_updated_at: row.instant("last_updated_at")?,
    })
}

impl Store {
    /// Registers a service principal for a project. `Conflict` if the project already has one
    /// with the same tenant and service principal id (compared case-insensitively);
    /// `NotFound` if the project does not exist.
    pub async fn create_cloud_provider_access_role(&self, role: &CloudProviderAccessRole) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query(
                "INSERT INTO cloud_provider_access_roles \
                 (id, group_id, provider, atlas_azure_app_id, service_principal_id, tenant_id, created_at, last_updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(role.id.as_str())
            .bind(role.group_id.as_str())
            .bind(role.provider.as_str())
            .bind(&role.atlas_azure_app_id)
            .bind(&role.service_principal_id)
            .bind(&role.tenant_id)
            .bind(to_millis(role.created_at))
            .bind(to_millis(role.last_updated_at))
            .execute(pool)
            .await
            .map_err(|e| Meaning::conflict("Azure service principal in this group").and_missing("group").classify(e))?;
        });
        Ok(())
    }

    /// The role `id` of `group`. `NotFound` if absent or registered in another project.
    pub async fn get_cloud_provider_access_role(
        &self,
        group: &GroupId,
        id: &RoleId,
    ) -> Result<CloudProviderAccessRole> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!(select_roles!(), " WHERE group_id = $1 AND id = $2"))
                .bind(group.as_str())
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref()
                .map(role_from)
                .transpose()?
                .ok_or(StoreError::NotFound { what: "cloud provider access role in this group" })
        })
    }

    /// The roles of a project, oldest first.
    pub async fn list_cloud_provider_access_roles(&self, group: &GroupId) -> Result<Vec<CloudProviderAccessRole>> {
        with_backend!(self, |pool| {
            sqlx::query(concat!(select_roles!(), " WHERE group_id = $1 ORDER BY created_at, id"))
                .bind(group.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(role_from)
                .collect()
        })
    }

    /// Deletes a role. `InUse` while the project's Encryption at Rest configuration refers to it
    /// (Atlas: `AZURE_SERVICE_PRINCIPAL_IN_USE`); `NotFound` if absent.
    pub async fn delete_cloud_provider_access_role(&self, group: &GroupId, id: &RoleId) -> Result<()> {
        let deleted = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM cloud_provider_access_roles WHERE group_id = $1 AND id = $2")
                .bind(group.as_str())
                .bind(id.as_str())
                .execute(pool)
                .await
                .map_err(|e| Meaning::in_use("Azure service principal used by Encryption at Rest").classify(e))?
                .rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::NotFound { what: "cloud provider access role in this group" });
        }
        Ok(())
    }

    /// Whether the project's Encryption at Rest configuration refers to role `id` (Atlas
    /// `featureUsages: [{featureType: ENCRYPTION_AT_REST}]`).
    pub async fn is_role_in_use(&self, group: &GroupId, id: &RoleId) -> Result<bool> {
        Ok(self.roles_in_use(group).await?.contains(id))
    }

    /// The roles of a project that its Encryption at Rest configuration refers to, for rendering
    /// `featureUsages` on a list without one query per role.
    pub async fn roles_in_use(&self, group: &GroupId) -> Result<BTreeSet<RoleId>> {
        with_backend!(self, |pool| {
            // A role a migration under private networking is waiting for is in use too.
            sqlx::query(
                "SELECT COALESCE(role_id, pending_role_id) AS role_id FROM ear_azure_key_vault \
                 WHERE group_id = $1 AND COALESCE(role_id, pending_role_id) IS NOT NULL",
            )
            .bind(group.as_str())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| RoleId::parse(&row.text("role_id")?).map_err(corrupt))
            .collect()
        })
    }
}
