//! Atlas-style project events, listed newest first with paging.
//!
//! Events are usually written in the same transaction as the change they report (see
//! [`crate::Store::put_ear_config`]), so an event exists if and only if its change committed.

use crate::codec::{Cols, count, to_millis};
use crate::error::{Result, StoreError, corrupt};
use crate::ids::{EventId, GroupId};
use crate::model::{Event, EventPage, Page};
use crate::{Store, with_backend};

/// Inserts `$events` (a slice of [`Event`]) through executor expression `$exec`, evaluated once
/// per event (e.g. `&mut *tx`). Shared by every operation that records events with its change.
macro_rules! insert_events {
    ($events:expr, $exec:expr) => {{
        for event in $events {
            sqlx::query(
                "INSERT INTO events (id, group_id, event_type_name, created_at, payload) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.id.as_str())
            .bind(event.group_id.as_str())
            .bind(&event.event_type_name)
            .bind($crate::codec::to_millis(event.created_at))
            .bind(&event.payload)
            .execute($exec)
            .await
            .map_err(|e| $crate::error::Meaning::conflict("event id").and_missing("group").classify(e))?;
        }
    }};
}
pub(crate) use insert_events;

/// `SELECT <every column> FROM events`, as a literal for `concat!`.
macro_rules! select_events {
    () => {
        "SELECT id, group_id, event_type_name, created_at, payload FROM events"
    };
}

fn event_from<R: Cols>(row: &R) -> Result<Event> {
    Ok(Event {
        id: EventId::parse(&row.text("id")?).map_err(corrupt)?,
        group_id: GroupId::parse(&row.text("group_id")?).map_err(corrupt)?,
        event_type_name: row.text("event_type_name")?,
        created_at: row.instant("created_at")?,
        payload: row.text("payload")?,
    })
}

impl Store {
    /// Records one event. `Conflict` if the id is taken, `NotFound` if the group is gone.
    pub async fn insert_event(&self, event: &Event) -> Result<()> {
        with_backend!(self, |pool| {
            let mut tx = crate::BeginWrite::begin_write(pool).await?;
            insert_events!(std::slice::from_ref(event), &mut *tx);
            tx.commit().await?;
        });
        Ok(())
    }

    /// The event `id` of `group`. `NotFound` if absent or in another project.
    pub async fn get_event(&self, group: &GroupId, id: &EventId) -> Result<Event> {
        with_backend!(self, |pool| {
            let row = sqlx::query(concat!(select_events!(), " WHERE group_id = $1 AND id = $2"))
                .bind(group.as_str())
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(event_from).transpose()?.ok_or(StoreError::NotFound { what: "event in this group" })
        })
    }

    /// One page of a project's events, newest first (ties in `created_at` broken by insertion
    /// order, newest first), and the total count. `Invalid` unless `page_num >= 1` and
    /// `1 <= items_per_page <= 500`.
    pub async fn list_events(&self, group: &GroupId, page: Page) -> Result<EventPage> {
        if page.page_num == 0 || page.items_per_page == 0 || page.items_per_page > Page::MAX_ITEMS_PER_PAGE {
            return Err(StoreError::Invalid(format!(
                "pageNum must be at least 1 and itemsPerPage between 1 and {}",
                Page::MAX_ITEMS_PER_PAGE
            )));
        }
        let limit = i64::from(page.items_per_page);
        let offset = i64::from(page.page_num - 1) * limit;
        with_backend!(self, |pool| {
            let events = sqlx::query(concat!(
                select_events!(),
                " WHERE group_id = $1 ORDER BY created_at DESC, seq DESC LIMIT $2 OFFSET $3"
            ))
            .bind(group.as_str())
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?
            .iter()
            .map(event_from)
            .collect::<Result<Vec<_>>>()?;
            let total = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE group_id = $1")
                .bind(group.as_str())
                .fetch_one(pool)
                .await?
                .int("n")?;
            Ok(EventPage { events, total_count: count(total) })
        })
    }

    /// Deletes every event created before `before`; returns how many (retention).
    pub async fn purge_events_before(&self, before: time::OffsetDateTime) -> Result<u64> {
        Ok(with_backend!(self, |pool| {
            sqlx::query("DELETE FROM events WHERE created_at < $1")
                .bind(to_millis(before))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
