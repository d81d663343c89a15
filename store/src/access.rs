//! Storage of who may connect and call the API: the device registry (MQTT credentials) and
//! HTTP API tokens.
//!
//! Only hashes are stored; making and checking them belongs to the callers. Every change takes
//! the next value of one access revision, in the same transaction as the change, so a running
//! server can poll that one number and load only the rows that changed since it last looked
//! (the CLI changes the registry from another process).
//!
//! The SQL is the same for SQLite and PostgreSQL (sqlx binds `$N` on both), so one macro
//! implements [`AccessStore`] for both back ends.

use super::StoreFuture;

/// A registered device: its secret's hash and whether it may connect.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCredential {
    pub device: String,
    /// Argon2id PHC string; never shown by the API.
    pub secret_hash: String,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub revision: i64,
}

/// An HTTP API token: its public id, role and the digest of its secret part.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub secret_hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revision: i64,
}

/// Everything that changed after a revision, and the revision it brings the reader to.
#[derive(Debug, Clone, Default)]
pub struct AccessChanges {
    pub revision: i64,
    pub devices: Vec<DeviceCredential>,
    pub tokens: Vec<ApiTokenRecord>,
}

/// Reads and changes the registry. Each change returns the access revision it took.
/// Changing a device or token that does not exist is [`crate::StoreError::NotFound`]; adding
/// one that exists is [`crate::StoreError::AlreadyExists`].
pub trait AccessStore: Send + Sync {
    /// The newest access revision: cheap, for polling.
    fn access_revision(&self) -> StoreFuture<'_, i64>;
    /// Devices and tokens changed after `since` (all of them for 0).
    fn access_changes(&self, since: i64) -> StoreFuture<'_, AccessChanges>;
    fn add_device<'a>(
        &'a self,
        device: &'a str,
        secret_hash: &'a str,
        now_ms: i64,
    ) -> StoreFuture<'a, i64>;
    fn set_device_secret<'a>(
        &'a self,
        device: &'a str,
        secret_hash: &'a str,
        now_ms: i64,
    ) -> StoreFuture<'a, i64>;
    fn set_device_enabled<'a>(
        &'a self,
        device: &'a str,
        enabled: bool,
        now_ms: i64,
    ) -> StoreFuture<'a, i64>;
    fn add_token<'a>(&'a self, token: &'a ApiTokenRecord) -> StoreFuture<'a, i64>;
    fn revoke_token<'a>(&'a self, id: &'a str, now_ms: i64) -> StoreFuture<'a, i64>;
}

type DeviceRow = (String, String, bool, i64, i64, i64);
type TokenRow = (String, String, String, String, i64, Option<i64>, i64);

pub(super) fn device_from_row(row: DeviceRow) -> DeviceCredential {
    let (device, secret_hash, enabled, created_at_ms, updated_at_ms, revision) = row;
    DeviceCredential {
        device,
        secret_hash,
        enabled,
        created_at_ms,
        updated_at_ms,
        revision,
    }
}

pub(super) fn token_from_row(row: TokenRow) -> ApiTokenRecord {
    let (id, name, role, secret_hash, created_at_ms, revoked_at_ms, revision) = row;
    ApiTokenRecord {
        id,
        name,
        role,
        secret_hash,
        created_at_ms,
        revoked_at_ms,
        revision,
    }
}

pub(super) const CURRENT_REVISION: &str = "SELECT revision FROM access_revision WHERE id = 1";
pub(super) const NEXT_REVISION: &str =
    "UPDATE access_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision";
pub(super) const SELECT_DEVICES: &str =
    "SELECT device_id, secret_hash, enabled, created_at, updated_at, revision
     FROM device_credentials WHERE revision > $1 ORDER BY device_id";
pub(super) const SELECT_TOKENS: &str =
    "SELECT id, name, role, secret_hash, created_at, revoked_at, revision
     FROM api_tokens WHERE revision > $1 ORDER BY created_at, id";

/// One change to the registry; every kind runs through the same transaction.
#[derive(Clone, Copy)]
pub(super) enum AccessChange<'a> {
    AddDevice {
        device: &'a str,
        secret_hash: &'a str,
        now_ms: i64,
    },
    SetSecret {
        device: &'a str,
        secret_hash: &'a str,
        now_ms: i64,
    },
    SetEnabled {
        device: &'a str,
        enabled: bool,
        now_ms: i64,
    },
    AddToken(&'a ApiTokenRecord),
    RevokeToken {
        id: &'a str,
        now_ms: i64,
    },
}

impl AccessChange<'_> {
    /// What the change is about, for errors: `device d1`, `token ab12`.
    pub(super) fn subject(&self) -> String {
        match self {
            AccessChange::AddDevice { device, .. }
            | AccessChange::SetSecret { device, .. }
            | AccessChange::SetEnabled { device, .. } => format!("device {device}"),
            AccessChange::AddToken(token) => format!("token {}", token.id),
            AccessChange::RevokeToken { id, .. } => format!("token {id}"),
        }
    }

    /// Whether it creates (so no row changed means it existed already).
    pub(super) fn adds(&self) -> bool {
        matches!(
            self,
            AccessChange::AddDevice { .. } | AccessChange::AddToken(_)
        )
    }
}

/// Implements [`AccessStore`] for a back end whose struct has a `pool` field.
macro_rules! impl_access_store {
    ($store:ty) => {
        impl $crate::access::AccessStore for $store {
            fn access_revision(&self) -> $crate::StoreFuture<'_, i64> {
                Box::pin(async move {
                    let revision: i64 =
                        sqlx::query_scalar($crate::access::CURRENT_REVISION)
                            .fetch_one(&self.pool)
                            .await?;
                    Ok(revision)
                })
            }

            fn access_changes(
                &self,
                since: i64,
            ) -> $crate::StoreFuture<'_, $crate::access::AccessChanges> {
                use $crate::access as access;
                Box::pin(async move {
                    // One transaction, so the revision matches the rows read with it.
                    let mut tx = self.pool.begin().await?;
                    let revision: i64 =
                        sqlx::query_scalar($crate::access::CURRENT_REVISION)
                            .fetch_one(&mut *tx)
                            .await?;
                    let devices = sqlx::query_as(access::SELECT_DEVICES)
                        .bind(since)
                        .fetch_all(&mut *tx)
                        .await?;
                    let tokens = sqlx::query_as(access::SELECT_TOKENS)
                        .bind(since)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(access::AccessChanges {
                        revision,
                        devices: devices.into_iter().map(access::device_from_row).collect(),
                        tokens: tokens.into_iter().map(access::token_from_row).collect(),
                    })
                })
            }

            fn add_device<'a>(
                &'a self,
                device: &'a str,
                secret_hash: &'a str,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, i64> {
                use $crate::access::AccessChange;
                Box::pin(self.access_change(AccessChange::AddDevice { device, secret_hash, now_ms }))
            }

            fn set_device_secret<'a>(
                &'a self,
                device: &'a str,
                secret_hash: &'a str,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, i64> {
                use $crate::access::AccessChange;
                Box::pin(self.access_change(AccessChange::SetSecret { device, secret_hash, now_ms }))
            }

            fn set_device_enabled<'a>(
                &'a self,
                device: &'a str,
                enabled: bool,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, i64> {
                use $crate::access::AccessChange;
                Box::pin(self.access_change(AccessChange::SetEnabled { device, enabled, now_ms }))
            }

            fn add_token<'a>(
                &'a self,
                token: &'a $crate::access::ApiTokenRecord,
            ) -> $crate::StoreFuture<'a, i64> {
                use $crate::access::AccessChange;
                Box::pin(self.access_change(AccessChange::AddToken(token)))
            }

            fn revoke_token<'a>(
                &'a self,
                id: &'a str,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, i64> {
                use $crate::access::AccessChange;
                Box::pin(self.access_change(AccessChange::RevokeToken { id, now_ms }))
            }
        }

        impl $store {
            /// One change in its own transaction, under the next access revision.
            async fn access_change(
                &self,
                change: $crate::access::AccessChange<'_>,
            ) -> Result<i64, $crate::StoreError> {
                use $crate::access::AccessChange;
                use $crate::StoreError;
                let mut tx = self.pool.begin().await?;
                let revision: i64 = sqlx::query_scalar($crate::access::NEXT_REVISION)
                    .fetch_one(&mut *tx)
                    .await?;
                // The revision is always $1.
                let query = match change {
                    AccessChange::AddDevice { device, secret_hash, now_ms } => sqlx::query(
                        "INSERT INTO device_credentials
                             (device_id, secret_hash, enabled, created_at, updated_at, revision)
                         VALUES ($2, $3, TRUE, $4, $4, $1) ON CONFLICT (device_id) DO NOTHING",
                    )
                    .bind(revision)
                    .bind(device)
                    .bind(secret_hash)
                    .bind(now_ms),
                    AccessChange::SetSecret { device, secret_hash, now_ms } => sqlx::query(
                        "UPDATE device_credentials SET secret_hash = $3, updated_at = $4, revision = $1
                         WHERE device_id = $2",
                    )
                    .bind(revision)
                    .bind(device)
                    .bind(secret_hash)
                    .bind(now_ms),
                    AccessChange::SetEnabled { device, enabled, now_ms } => sqlx::query(
                        "UPDATE device_credentials SET enabled = $3, updated_at = $4, revision = $1
                         WHERE device_id = $2",
                    )
                    .bind(revision)
                    .bind(device)
                    .bind(enabled)
                    .bind(now_ms),
                    AccessChange::AddToken(token) => sqlx::query(
                        "INSERT INTO api_tokens
                             (id, name, role, secret_hash, created_at, revoked_at, revision)
                         VALUES ($2, $3, $4, $5, $6, NULL, $1) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(revision)
                    .bind(&token.id)
                    .bind(&token.name)
                    .bind(&token.role)
                    .bind(&token.secret_hash)
                    .bind(token.created_at_ms),
                    // Revoking twice keeps the first time.
                    AccessChange::RevokeToken { id, now_ms } => sqlx::query(
                        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $3), revision = $1
                         WHERE id = $2",
                    )
                    .bind(revision)
                    .bind(id)
                    .bind(now_ms),
                };
                let changed = query.execute(&mut *tx).await?.rows_affected();
                if changed == 0 {
                    let what = change.subject();
                    return Err(if change.adds() {
                        StoreError::AlreadyExists(what)
                    } else {
                        StoreError::NotFound(what)
                    });
                }
                tx.commit().await?;
                Ok(revision)
            }
        }
    };
}

pub(super) use impl_access_store;
