//! Drops read in ranges, recorded in PostgreSQL (`notify_drops`, `notify_drop_ranges`).
//!
//! Reading an upload first plans it: its size is split into ranges of `notify.drop_range_bytes`
//! ([`split`]), and the drop is recorded with their count. Each range is then read on its own,
//! by whichever daemon takes its work message:
//!
//! - [`DropRanges::start`] counts the read (more than one is a re-read) and says whether the
//!   range is still to be read: a range finished, or of a drop abandoned, is not read again.
//! - [`DropRanges::finish`] records the range's line count and rejects (numbered within the
//!   range) once, whoever finishes it first, and adds its totals to the drop's. The range
//!   that finishes the drop is told so: it writes the rejects object, numbering each reject
//!   after the lines of the ranges before it ([`DropRanges::rejects`]).
//!
//! Planning a new upload of a key abandons the older uploads' unread ranges: their lines are
//! not current any more, and S3 would refuse to read them (`If-Match`) anyway.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::drop::{MAX_REJECTS_LISTED, Reject};

/// Rejects listed per range; past this they are counted. A drop's rejects object lists at
/// most [`MAX_REJECTS_LISTED`] in all.
pub const MAX_REJECTS_PER_RANGE: usize = 10_000;

/// The ranges `[start, end)` of an object of `size` bytes, each `range_bytes` long but the
/// last. An empty object has none.
pub fn split(size: u64, range_bytes: u64) -> Vec<(u64, u64)> {
    let range_bytes = range_bytes.max(1);
    (0..size.div_ceil(range_bytes))
        .map(|i| (i * range_bytes, ((i + 1) * range_bytes).min(size)))
        .collect()
}

/// The drops' record.
#[derive(Clone)]
pub struct DropRanges {
    pool: PgPool,
}

/// One upload, as planned.
pub struct Upload<'a> {
    pub drop_id: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub etag: &'a str,
    pub size: u64,
    pub ranges: u32,
}

/// What planning found.
#[derive(Debug)]
pub struct Planned {
    /// Older uploads of the same key abandoned now, with how many of their ranges were unread.
    pub abandoned: Vec<(String, i64)>,
    /// How far this upload is.
    pub state: DropState,
}

/// How far an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropState {
    /// Ranges still to read.
    Reading,
    /// Every range read; its rejects object still to write.
    Read,
    /// Read and reported: nothing left to do.
    Reported,
    /// A newer upload of the key came first.
    Abandoned,
}

/// A drop's totals, once every range is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub ranges: u32,
    pub accepted: i64,
    pub rejected: i64,
}

/// Whether to read a range.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Read it: this is its `reads`th read (above 1, a re-read).
    Read { reads: i32 },
    /// Finished already, by this daemon or another.
    Finished,
}

/// A range's outcome.
#[derive(Debug, Default)]
pub struct RangeResult {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// At most [`MAX_REJECTS_PER_RANGE`], numbered within the range.
    pub rejects: Vec<Reject>,
}

/// What finishing a range did.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// Recorded; other ranges are still to be read.
    Range,
    /// Recorded, and it was the drop's last.
    Drop,
    /// Another read finished it first: nothing recorded.
    Duplicate,
}

impl DropRanges {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records an upload (once, however often its notification arrives) and abandons the
    /// unfinished older uploads of its key.
    pub async fn plan(&self, upload: &Upload<'_>) -> Result<Planned, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO notify_drops (drop_id, bucket, key, etag, size, ranges, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 0 THEN now() END)
             ON CONFLICT (drop_id) DO NOTHING",
        )
        .bind(upload.drop_id)
        .bind(upload.bucket)
        .bind(upload.key)
        .bind(upload.etag)
        .bind(upload.size as i64)
        .bind(upload.ranges as i32)
        .execute(&mut *tx)
        .await?;
        let abandoned: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE notify_drops SET abandoned_at = now()
             WHERE bucket = $1 AND key = $2 AND drop_id <> $3
               AND finished_at IS NULL AND abandoned_at IS NULL
             RETURNING drop_id, (ranges - done)::bigint",
        )
        .bind(upload.bucket)
        .bind(upload.key)
        .bind(upload.drop_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let state = self
            .state(upload.drop_id)
            .await?
            .unwrap_or(DropState::Reading);
        Ok(Planned { abandoned, state })
    }

    /// How far a drop is; `None` when it is not recorded (or pruned).
    pub async fn state(&self, drop_id: &str) -> Result<Option<DropState>, sqlx::Error> {
        let row: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT abandoned_at IS NOT NULL, finished_at IS NOT NULL, reported_at IS NOT NULL
             FROM notify_drops WHERE drop_id = $1",
        )
        .bind(drop_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|state| match state {
            (true, _, _) => DropState::Abandoned,
            (false, _, true) => DropState::Reported,
            (false, true, false) => DropState::Read,
            (false, false, false) => DropState::Reading,
        }))
    }

    /// The drop's totals.
    pub async fn totals(&self, drop_id: &str) -> Result<Totals, sqlx::Error> {
        let (ranges, accepted, rejected): (i32, i64, i64) = sqlx::query_as(
            "SELECT ranges, accepted, rejected FROM notify_drops WHERE drop_id = $1",
        )
        .bind(drop_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Totals {
            ranges: ranges.max(0) as u32,
            accepted,
            rejected,
        })
    }

    /// Records that the drop's rejects object is written.
    pub async fn reported(&self, drop_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE notify_drops SET reported_at = now() WHERE drop_id = $1")
            .bind(drop_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts a read of range `range_no` of a drop [`DropState::Reading`] and says whether to
    /// read it.
    pub async fn start(&self, drop_id: &str, range_no: u32) -> Result<Start, sqlx::Error> {
        let reads: Option<i32> = sqlx::query_scalar(
            "INSERT INTO notify_drop_ranges (drop_id, range_no, reads) VALUES ($1, $2, 1)
             ON CONFLICT (drop_id, range_no) DO UPDATE SET reads = notify_drop_ranges.reads + 1
             WHERE notify_drop_ranges.finished_at IS NULL
             RETURNING reads",
        )
        .bind(drop_id)
        .bind(range_no as i32)
        .fetch_optional(&self.pool)
        .await?;
        Ok(reads.map_or(Start::Finished, |reads| Start::Read { reads }))
    }

    /// Records a range read to its end, once; the drop's totals when it was the last.
    pub async fn finish(
        &self,
        drop_id: &str,
        range_no: u32,
        result: &RangeResult,
    ) -> Result<Finished, sqlx::Error> {
        let rejects = serde_json::to_value(&result.rejects).unwrap_or(Value::Null);
        let mut tx = self.pool.begin().await?;
        let recorded = sqlx::query(
            "UPDATE notify_drop_ranges
             SET finished_at = now(), lines = $3, accepted = $4, rejected = $5, rejects = $6
             WHERE drop_id = $1 AND range_no = $2 AND finished_at IS NULL",
        )
        .bind(drop_id)
        .bind(range_no as i32)
        .bind(result.lines as i64)
        .bind(result.accepted as i64)
        .bind(result.rejected as i64)
        .bind(rejects)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            tx.rollback().await?;
            return Ok(Finished::Duplicate);
        }
        let (done, ranges): (i32, i32) = sqlx::query_as(
            "UPDATE notify_drops
             SET done = done + 1, accepted = accepted + $2, rejected = rejected + $3,
                 finished_at = CASE WHEN done + 1 >= ranges THEN now() END
             WHERE drop_id = $1
             RETURNING done, ranges",
        )
        .bind(drop_id)
        .bind(result.accepted as i64)
        .bind(result.rejected as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if done >= ranges {
            Finished::Drop
        } else {
            Finished::Range
        })
    }

    /// The drop's rejects in line order, each numbered in the drop, at most
    /// [`MAX_REJECTS_LISTED`]; and how many more there are. Reads one range at a time.
    pub async fn rejects(
        &self,
        drop_id: &str,
        ranges: u32,
    ) -> Result<(Vec<Reject>, u64), sqlx::Error> {
        let mut listed = Vec::new();
        let mut unlisted = 0u64;
        let mut lines_before = 0u64;
        for range_no in 0..ranges as i32 {
            let row: Option<(Option<i64>, Option<i64>, Option<Value>)> = sqlx::query_as(
                "SELECT lines, rejected, rejects FROM notify_drop_ranges
                 WHERE drop_id = $1 AND range_no = $2",
            )
            .bind(drop_id)
            .bind(range_no)
            .fetch_optional(&self.pool)
            .await?;
            let Some((lines, rejected, rejects)) = row else {
                continue;
            };
            let rejects: Vec<Reject> = rejects
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            let rejected = rejected.unwrap_or(0).max(0) as u64;
            unlisted += rejected.saturating_sub(rejects.len() as u64);
            for mut reject in rejects {
                if listed.len() < MAX_REJECTS_LISTED {
                    reject.line += lines_before;
                    listed.push(reject);
                } else {
                    unlisted += 1;
                }
            }
            lines_before += lines.unwrap_or(0).max(0) as u64;
        }
        Ok((listed, unlisted))
    }

    /// The re-reads of a drop's ranges (reads past the first of each), for operators and
    /// tests.
    pub async fn rereads(&self, drop_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COALESCE(SUM(reads - 1), 0)::bigint FROM notify_drop_ranges WHERE drop_id = $1",
        )
        .bind(drop_id)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes, a thousand at a time, drops recorded more than `older_than` ago (their work
    /// messages are past every queue's retention). Returns how many.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, sqlx::Error> {
        let mut pruned = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM notify_drops WHERE drop_id IN (
                     SELECT drop_id FROM notify_drops
                     WHERE created_at < clock_timestamp() - make_interval(secs => $1)
                     LIMIT 1000)",
            )
            .bind(older_than.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected();
            pruned += done;
            if done < 1000 {
                return Ok(pruned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_once() {
        assert_eq!(split(0, 8), vec![]);
        assert_eq!(split(8, 8), vec![(0, 8)]);
        assert_eq!(split(17, 8), vec![(0, 8), (8, 16), (16, 17)]);
    }
}
