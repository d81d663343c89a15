//! Cluster mode's record of the shared stream: per partition, the stream sequence storage
//! holds every record up to, and the fencing token of the node that writes it now
//! (PostgreSQL only).

use serde::Serialize;

use crate::{StoreError, StoreFuture};

/// A partition claimed for writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub partition: u16,
    /// Checked by every batch of the claimer; raised by the next claim.
    pub token: i64,
    /// Storage holds the partition's records up to this stream sequence.
    pub stored_seq: u64,
}

/// A batch's fence: it commits only while its writer's claim is the newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub partition: u16,
    pub token: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PartitionPosition {
    pub partition: u16,
    pub stored_seq: u64,
    pub claimed_by: Option<String>,
}

pub trait PartitionLog: Send + Sync {
    /// Takes `partition` for `node`: raises its token (so the previous writer's next commit
    /// is refused) and gives the position to go on from. Waits for a commit of the previous
    /// writer that is under way, so the position includes it.
    fn claim<'a>(&'a self, partition: u16, node: &'a str) -> StoreFuture<'a, Claim>;
    fn positions(&self) -> StoreFuture<'_, Vec<PartitionPosition>>;
}

impl PartitionLog for crate::PgStore {
    fn claim<'a>(&'a self, partition: u16, node: &'a str) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let (token, stored): (i64, i64) = sqlx::query_as(
                "INSERT INTO partition_log AS p (partition, stored_seq, lease_token, claimed_by, claimed_at)
                 VALUES ($1, 0, 1, $2, now())
                 ON CONFLICT (partition) DO UPDATE
                   SET lease_token = p.lease_token + 1, claimed_by = $2, claimed_at = now()
                 RETURNING lease_token, stored_seq",
            )
            .bind(i32::from(partition))
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
            Ok(Claim {
                partition,
                token,
                stored_seq: u64::try_from(stored).unwrap_or(0),
            })
        })
    }

    fn positions(&self) -> StoreFuture<'_, Vec<PartitionPosition>> {
        Box::pin(async move {
            let rows: Vec<(i32, i64, Option<String>)> = sqlx::query_as(
                "SELECT partition, stored_seq, claimed_by FROM partition_log ORDER BY partition",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(p, s, c)| PartitionPosition {
                    partition: u16::try_from(p).unwrap_or(0),
                    stored_seq: u64::try_from(s).unwrap_or(0),
                    claimed_by: c,
                })
                .collect())
        })
    }
}

/// Checks a batch's fence and raises its partition's position, first thing in the batch's
/// transaction: the row lock it takes makes a claim wait for this commit.
pub(crate) async fn check_fence(
    tx: &mut sqlx::PgConnection,
    fence: Fence,
    position: Option<u64>,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE partition_log SET stored_seq = GREATEST(stored_seq, COALESCE($3, stored_seq))
         WHERE partition = $1 AND lease_token = $2",
    )
    .bind(i32::from(fence.partition))
    .bind(fence.token)
    .bind(position.map(|p| i64::try_from(p).unwrap_or(i64::MAX)))
    .execute(tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Fenced(fence.partition));
    }
    Ok(())
}
