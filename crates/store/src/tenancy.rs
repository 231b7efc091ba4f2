//! Organizations and projects (groups): the tenancy every other record hangs off.

use crate::codec::{Cols, to_millis};
use crate::error::{Meaning, Result, StoreError};
use crate::ids::{GroupId, OrgId};
use crate::model::{Group, Organization};
use crate::{Store, with_backend};

fn org_from<R: Cols>(row: &R) -> Result<Organization> {
    Ok(Organization {
        id: OrgId::parse(&row.text("id")?).map_err(crate::error::corrupt)?,
        name: row.text("name")?,
        created_at: row.instant("created_at")?,
    })
}

pub(crate) fn group_from<R: Cols>(row: &R) -> Result<Group> {
    Ok(Group {
        id: GroupId::parse(&row.text("id")?).map_err(crate::error::corrupt)?,
        org_id: OrgId::parse(&row.text("org_id")?).map_err(crate::error::corrupt)?,
        name: row.text("name")?,
        created_at: row.instant("created_at")?,
    })
}

impl Store {
    /// Creates an organization. `Conflict` if the id is taken.
    pub async fn create_organization(&self, org: &Organization) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(org.id.as_str())
                .bind(&org.name)
                .bind(to_millis(org.created_at))
                .execute(pool)
                .await
                .map_err(|e| Meaning::conflict("organization id").classify(e))?;
        });
        Ok(())
    }

    /// The organization, or `NotFound`.
    pub async fn get_organization(&self, id: &OrgId) -> Result<Organization> {
        with_backend!(self, |pool| {
            let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(org_from).transpose()?.ok_or(StoreError::NotFound { what: "organization" })
        })
    }

    /// Every organization, oldest first.
    pub async fn list_organizations(&self) -> Result<Vec<Organization>> {
        with_backend!(self, |pool| {
            sqlx::query("SELECT id, name, created_at FROM organizations ORDER BY created_at, id")
                .fetch_all(pool)
                .await?
                .iter()
                .map(org_from)
                .collect()
        })
    }

    /// Creates a project. `Conflict` if the name is taken in the organization, `NotFound` if the
    /// organization does not exist.
    pub async fn create_group(&self, group: &Group) -> Result<()> {
        with_backend!(self, |pool| {
            sqlx::query("INSERT INTO groups (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
                .bind(group.id.as_str())
                .bind(group.org_id.as_str())
                .bind(&group.name)
                .bind(to_millis(group.created_at))
                .execute(pool)
                .await
                .map_err(|e| {
                    Meaning::conflict("group name in this organization").and_missing("organization").classify(e)
                })?;
        });
        Ok(())
    }

    /// The project, or `NotFound`.
    pub async fn get_group(&self, id: &GroupId) -> Result<Group> {
        with_backend!(self, |pool| {
            let row = sqlx::query("SELECT id, org_id, name, created_at FROM groups WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(group_from).transpose()?.ok_or(StoreError::NotFound { what: "group" })
        })
    }

    /// The project called `name` in `org`, or `NotFound`.
    pub async fn get_group_by_name(&self, org: &OrgId, name: &str) -> Result<Group> {
        with_backend!(self, |pool| {
            let row = sqlx::query("SELECT id, org_id, name, created_at FROM groups WHERE org_id = $1 AND name = $2")
                .bind(org.as_str())
                .bind(name)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(group_from).transpose()?.ok_or(StoreError::NotFound { what: "group" })
        })
    }

    /// The projects of an organization, oldest first.
    pub async fn list_groups(&self, org: &OrgId) -> Result<Vec<Group>> {
        with_backend!(self, |pool| {
            sqlx::query("SELECT id, org_id, name, created_at FROM groups WHERE org_id = $1 ORDER BY created_at, id")
                .bind(org.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(group_from)
                .collect()
        })
    }

    /// Deletes a project and everything that belongs to it (roles bound on it, Cloud Provider
    /// Access roles, its Encryption at Rest configuration, its events). `NotFound` if absent.
    pub async fn delete_group(&self, id: &GroupId) -> Result<()> {
        let deleted = with_backend!(self, |pool| {
            sqlx::query("DELETE FROM groups WHERE id = $1").bind(id.as_str()).execute(pool).await?.rows_affected()
        });
        if deleted == 0 {
            return Err(StoreError::NotFound { what: "group" });
        }
        Ok(())
    }
}
