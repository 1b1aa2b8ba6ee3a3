//! Plays the DynamoDB stream event source mapping of the outbox relay function (AWS docs,
//! "Using AWS Lambda with Amazon DynamoDB"): reads every shard of the table's stream in order,
//! from the oldest record (`TRIM_HORIZON`), keeps the records the mapping's filter keeps
//! ([`enrichment::webhooks::is_outbox_insert`]: outbox inserts), and invokes the handler
//! ([`Webhooks::relay_stream`]) with them as a DynamoDB event. A reported batch item failure
//! gives the records again from the failed sequence number after a short pause, as the mapping
//! does with partial batch responses; a batch that succeeded moves the shard's position past it.
//!
//! The stream is read from the embedded emulator's own `Database` (ListStreams,
//! DescribeStream, GetShardIterator, GetRecords), whose record JSON is the stream API's and
//! becomes the Lambda event by a serde round trip. A persisted stack keeps each shard's position
//! in `<state>/outbox-relay.json`, so that a restart goes on where the last run stopped rather
//! than relaying the whole stream again (the event source mapping keeps its position too).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use dynoxide::actions::describe_stream::DescribeStreamRequest;
use dynoxide::actions::get_records::GetRecordsRequest;
use dynoxide::actions::get_shard_iterator::GetShardIteratorRequest;
use dynoxide::actions::list_streams::ListStreamsRequest;
use enrichment::webhooks::{Webhooks, is_outbox_insert};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How often each shard is read for new records.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The wait before records whose relay failed are given again.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The most stream records per invocation: the event source mapping's default `BatchSize`
/// for a DynamoDB stream.
pub const BATCH_SIZE: usize = 100;

/// How often the stream's shards are listed again (DescribeStream); between two listings the
/// known shards are read. The emulator reads its whole stream table for a listing as for a
/// read (no index), so the listing is not repeated at every poll.
pub const SHARD_REFRESH: Duration = Duration::from_secs(5);

/// The file of a persisted stack's stream positions, in its state folder.
pub const CHECKPOINT_FILE: &str = "outbox-relay.json";

/// Where the next read of a shard starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// The shard's oldest record (`TRIM_HORIZON`).
    Start,
    /// The record after this sequence number: the previous batch succeeded.
    After(String),
    /// This sequence number: its relay failed and it is given again.
    At(String),
}

/// The positions kept between runs: the stream they belong to and, per shard, the sequence
/// number of the last record handled.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    stream_arn: String,
    shards: BTreeMap<String, String>,
}

/// The relay's event source: the emulator's database, the table whose stream it reads, and
/// the handler's use case.
pub struct OutboxRelay {
    /// The embedded DynamoDB, a clone of the one the emulator serves.
    pub db: dynoxide::Database,
    /// The table whose stream is read.
    pub table: String,
    /// The handler's use case.
    pub webhooks: Arc<Webhooks>,
    /// Where positions are kept between runs (a persisted stack); `None`: from the oldest
    /// record at every start.
    pub checkpoint: Option<PathBuf>,
}

/// The relay's running state: the stream being read, its shards (and when they were listed),
/// and each shard's position.
#[derive(Default)]
struct Cursor {
    stream_arn: String,
    shards: Vec<String>,
    listed: Option<tokio::time::Instant>,
    positions: BTreeMap<String, Position>,
    warned_no_stream: bool,
}

impl OutboxRelay {
    /// Reads and relays until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut cursor = Cursor::default();
        loop {
            let pause = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                pause = self.poll_once(&mut cursor) => pause,
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one batch from each shard and relays it; returns the pause before the next read
    /// ([`RETRY_PAUSE`] after a failure, else [`POLL_INTERVAL`]).
    async fn poll_once(&self, cursor: &mut Cursor) -> Duration {
        let stream_arn = match self.stream_arn().await {
            Ok(Some(arn)) => arn,
            Ok(None) => {
                if !cursor.warned_no_stream {
                    tracing::warn!(table = %self.table, "the table has no stream: no webhook event is relayed");
                    cursor.warned_no_stream = true;
                }
                return RETRY_PAUSE;
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: ListStreams failed");
                return RETRY_PAUSE;
            }
        };
        if cursor.stream_arn != stream_arn {
            cursor.positions = self.saved_positions(&stream_arn);
            cursor.stream_arn = stream_arn.clone();
            cursor.listed = None;
        }
        if cursor.listed.is_none_or(|at| at.elapsed() >= SHARD_REFRESH) {
            match self.shards(&stream_arn).await {
                Ok(shards) => {
                    cursor.shards = shards;
                    cursor.listed = Some(tokio::time::Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: DescribeStream failed");
                    return RETRY_PAUSE;
                }
            }
        }
        let mut pause = POLL_INTERVAL;
        let mut moved = false;
        for shard in cursor.shards.clone() {
            let position = cursor
                .positions
                .get(&shard)
                .cloned()
                .unwrap_or(Position::Start);
            match self.relay_shard(&stream_arn, &shard, &position).await {
                Ok(next) => {
                    if next != position {
                        moved |= matches!(next, Position::After(_));
                        cursor.positions.insert(shard, next);
                    }
                }
                Err((next, e)) => {
                    tracing::warn!(shard = %shard, error = %e, "outbox relay: records given again");
                    cursor.positions.insert(shard, next);
                    pause = RETRY_PAUSE;
                }
            }
        }
        if moved {
            self.save_positions(cursor);
        }
        pause
    }

    /// Relays one batch of `shard` from `position`; returns the shard's next position, or the
    /// position to read again from (the failed record's) with why.
    async fn relay_shard(
        &self,
        stream_arn: &str,
        shard: &str,
        position: &Position,
    ) -> Result<Position, (Position, String)> {
        let again = |e: String| (position.clone(), e);
        let (kind, sequence_number) = match position {
            Position::Start => ("TRIM_HORIZON", None),
            Position::After(seq) => ("AFTER_SEQUENCE_NUMBER", Some(seq.clone())),
            Position::At(seq) => ("AT_SEQUENCE_NUMBER", Some(seq.clone())),
        };
        let request = GetShardIteratorRequest {
            stream_arn: stream_arn.to_string(),
            shard_id: shard.to_string(),
            shard_iterator_type: kind.to_string(),
            sequence_number,
        };
        let db = self.db.clone();
        let iterator = blocking(move || db.get_shard_iterator(request))
            .await
            .map_err(again)?
            .shard_iterator
            .ok_or_else(|| again("GetShardIterator: no iterator".into()))?;
        let request = GetRecordsRequest {
            shard_iterator: iterator,
            limit: Some(BATCH_SIZE),
        };
        let db = self.db.clone();
        let records = blocking(move || db.get_records(request))
            .await
            .map_err(again)?
            .records;
        let Some(last) = records.last() else {
            return Ok(position.clone());
        };
        let last = last.dynamodb.sequence_number.clone();
        let mut event = Event::default();
        event.records = records
            .iter()
            .filter_map(|record| lambda_record(record, stream_arn))
            .filter(is_outbox_insert)
            .collect();
        if event.records.is_empty() {
            return Ok(Position::After(last));
        }
        let response = self.webhooks.relay_stream(&event).await;
        match response.batch_item_failures.first() {
            None => Ok(Position::After(last)),
            Some(failure) => {
                let failed = failure.item_identifier.clone().unwrap_or_default();
                let next = if event
                    .records
                    .iter()
                    .any(|r| r.change.sequence_number.as_deref() == Some(failed.as_str()))
                {
                    Position::At(failed.clone())
                } else {
                    // An identifier that names no record: the whole batch again, as the event
                    // source mapping does.
                    position.clone()
                };
                Err((
                    next,
                    format!("the relay failed at sequence number {failed:?}"),
                ))
            }
        }
    }

    /// The ARN of the table's stream, `None` when it has none.
    async fn stream_arn(&self) -> Result<Option<String>, String> {
        let request = ListStreamsRequest {
            table_name: Some(self.table.clone()),
            ..ListStreamsRequest::default()
        };
        let db = self.db.clone();
        let streams = blocking(move || db.list_streams(request)).await?;
        Ok(streams.streams.into_iter().next().map(|s| s.stream_arn))
    }

    /// The shard ids of the stream.
    async fn shards(&self, stream_arn: &str) -> Result<Vec<String>, String> {
        let request = DescribeStreamRequest {
            stream_arn: stream_arn.to_string(),
            ..DescribeStreamRequest::default()
        };
        let db = self.db.clone();
        let described = blocking(move || db.describe_stream(request)).await?;
        Ok(described
            .stream_description
            .shards
            .into_iter()
            .map(|shard| shard.shard_id)
            .collect())
    }

    /// The positions the checkpoint file keeps for `stream_arn`; none (every shard from its
    /// oldest record) without a file, or with one of another stream.
    fn saved_positions(&self, stream_arn: &str) -> BTreeMap<String, Position> {
        let Some(path) = &self.checkpoint else {
            return BTreeMap::new();
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return BTreeMap::new();
        };
        match serde_json::from_str::<Checkpoint>(&text) {
            Ok(saved) if saved.stream_arn == stream_arn => saved
                .shards
                .into_iter()
                .map(|(shard, seq)| (shard, Position::After(seq)))
                .collect(),
            Ok(_) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "outbox relay: checkpoint unreadable; reading the stream from its start");
                BTreeMap::new()
            }
        }
    }

    /// Writes the positions of the records handled so far to the checkpoint file, if any.
    fn save_positions(&self, cursor: &Cursor) {
        let Some(path) = &self.checkpoint else {
            return;
        };
        let checkpoint = Checkpoint {
            stream_arn: cursor.stream_arn.clone(),
            shards: cursor
                .positions
                .iter()
                .filter_map(|(shard, position)| match position {
                    Position::After(seq) => Some((shard.clone(), seq.clone())),
                    Position::Start | Position::At(_) => None,
                })
                .collect(),
        };
        let text = serde_json::to_string(&checkpoint).unwrap_or_default();
        // Written aside and renamed: a crash never leaves half a file.
        let partial = path.with_extension("json.partial");
        let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "outbox relay: checkpoint not written");
        }
    }
}

/// A stream record of the emulator as the Lambda event carries it (`eventSourceARN` added);
/// `None`, logged, for one that does not convert.
fn lambda_record(
    record: &dynoxide::actions::get_records::Record,
    stream_arn: &str,
) -> Option<EventRecord> {
    let converted = serde_json::to_value(record).and_then(|mut value| {
        value["eventSourceARN"] = serde_json::Value::String(stream_arn.to_string());
        serde_json::from_value::<EventRecord>(value)
    });
    match converted {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::error!(event_id = %record.event_id, error = %e, "outbox relay: a stream record that is no Lambda event record, skipped");
            None
        }
    }
}

/// Runs a call of the embedded database (synchronous, behind its lock) off the async threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> dynoxide::errors::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the stream read stopped: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emulator_stream_record_becomes_a_lambda_event_record() {
        let item: dynoxide::types::Item = serde_json::from_value(serde_json::json!({
            "pk": {"S": "ORG#org_a"},
            "sk": {"S": "OUTBOX#6f1c3f6e-0000-4000-8000-000000000001"},
            "expiresAt": {"N": "1800000000"},
        }))
        .unwrap();
        let record = dynoxide::actions::get_records::Record {
            event_id: "e1".into(),
            event_name: "INSERT".into(),
            event_version: "1.1".into(),
            event_source: "aws:dynamodb".into(),
            aws_region: "us-east-1".into(),
            dynamodb: dynoxide::actions::get_records::StreamRecord {
                keys: item.clone(),
                new_image: Some(item),
                old_image: None,
                sequence_number: "000000000000000000042".into(),
                size_bytes: 120,
                stream_view_type: "NEW_IMAGE".into(),
                approximate_creation_date_time: 1_790_000_000.0,
            },
            user_identity: None,
        };
        let converted = lambda_record(&record, "arn:aws:dynamodb:stream").unwrap();
        assert!(is_outbox_insert(&converted));
        assert_eq!(
            converted.change.approximate_creation_date_time.timestamp(),
            1_790_000_000
        );
        assert_eq!(
            converted.change.sequence_number.as_deref(),
            Some("000000000000000000042")
        );
        assert_eq!(
            converted.event_source_arn.as_deref(),
            Some("arn:aws:dynamodb:stream")
        );
        let mut modify = record;
        modify.event_name = "MODIFY".into();
        assert!(!is_outbox_insert(
            &lambda_record(&modify, "arn:aws:dynamodb:stream").unwrap()
        ));
    }
}
