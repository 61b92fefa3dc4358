//! One archive file: an hour's rows of a table, read from the database in one binary COPY,
//! written as ZSTD Parquet to a temporary file, fsynced, read back and compared (row count and
//! key checksum) with what the database sent, then renamed into place and the directory
//! fsynced. The Parquet encoding runs on a blocking thread, off the runtime the stream uses.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use tokio_postgres::Transaction;

use super::ArchiveError;
use super::columns::{self, Checksum, Columns, Kind};
use super::tables::Table;
use crate::config::ArchiveConfig;
use crate::db::copy_out::CopyOut;

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH: usize = 65_536;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
    pub checksum: Checksum,
}

/// The writer's settings for `table`: ZSTD, page statistics (and so the page index), times
/// delta-encoded, the sort order recorded.
fn properties(table: &Table, cfg: &ArchiveConfig) -> Result<WriterProperties, ArchiveError> {
    let level = ZstdLevel::try_new(cfg.zstd_level).map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    let position = |name: &str| table.cols.iter().position(|c| c.name == name);
    let sorting: Vec<SortingColumn> =
        [position("asset_id").or(position("token_id")).or(position("condition_id")), position("source_ts"), position("received_at")]
            .into_iter()
            .flatten()
            .map(|i| SortingColumn { column_idx: i as i32, descending: false, nulls_first: false })
            .collect();
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(cfg.row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(sorting))
        .set_created_by(concat!("collector ", env!("CARGO_PKG_VERSION")).to_string());
    for c in table.cols {
        let path = ColumnPath::from(c.name);
        // Times and amounts plain, without a dictionary: ZSTD finds more in sorted plain
        // times than in their delta-packed bits (BENCHMARKS.md, "Archive": 1 byte a level
        // change less), and a dictionary of sizes is mostly overflow.
        let encoding = match c.kind {
            Kind::Time | Kind::Amount(..) => Encoding::PLAIN,
            Kind::Random => Encoding::DELTA_LENGTH_BYTE_ARRAY,
            _ => continue,
        };
        b = b.set_column_dictionary_enabled(path.clone(), false).set_column_encoding(path, encoding);
    }
    Ok(b.build())
}

/// Writes the rows `query` returns (in `tx`) to `path` (`None`, and no file, when there are
/// none).
pub async fn write(
    tx: &Transaction<'_>,
    table: &'static Table,
    query: &str,
    path: &Path,
    cfg: &ArchiveConfig,
) -> Result<Option<Written>, ArchiveError> {
    let dir = path.parent().expect("a file in a directory").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| ArchiveError::io(&dir, e))?;
    // Temporary files of an earlier pass that stopped before its rename (one pass writes at a
    // time): removed.
    for e in std::fs::read_dir(&dir).map_err(|e| ArchiveError::io(&dir, e))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let tmp = dir.join(format!(".tmp-{}", path.file_name().expect("a file name").to_string_lossy()));
    let schema = columns::schema(table.cols);
    let props = properties(table, cfg)?;
    // The encoder, on its own thread: batches in, the file's size out.
    let (batches, rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
    let encoder = {
        let (tmp, schema) = (tmp.clone(), schema.clone());
        tokio::task::spawn_blocking(move || encode(rx, &tmp, schema, props))
    };
    let mut copy = CopyOut::start(tx, query).await?;
    let mut cols = Columns::new(table.cols, BATCH);
    let (mut sent, mut total) = (Checksum::default(), 0u64);
    let mut failed = None;
    loop {
        match copy.next().await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                failed = Some(ArchiveError::from(e));
                break;
            }
        }
        table.fill(&copy, &mut cols);
        cols.end_row();
        total += 1;
        if cols.rows >= BATCH && batches.send(cols.batch(&schema)).await.is_err() {
            break;
        }
    }
    if failed.is_none() && cols.rows > 0 {
        let _ = batches.send(cols.batch(&schema)).await;
    }
    sent.merge(cols.checksum);
    drop(batches);
    let encoded = encoder.await.map_err(|e| ArchiveError::Parquet(format!("the encoder thread: {e}")))?;
    if let Some(e) = failed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    encoded?;
    if total == 0 {
        let _ = std::fs::remove_file(&tmp);
        return Ok(None);
    }
    // Read back and compared before it takes its name.
    let (check, cols_spec) = (tmp.clone(), table.cols);
    let read = tokio::task::spawn_blocking(move || read_back(&check, cols_spec))
        .await
        .map_err(|e| ArchiveError::Parquet(format!("the verifier thread: {e}")))??;
    if read != sent || read.rows != total {
        let _ = std::fs::remove_file(&tmp);
        return Err(ArchiveError::Verify(format!(
            "{}: the database sent {total} rows (checksum {}), the file holds {} (checksum {})",
            path.display(),
            sent.text(),
            read.rows,
            read.text()
        )));
    }
    std::fs::rename(&tmp, path).map_err(|e| ArchiveError::io(path, e))?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| ArchiveError::io(&dir, e))?;
    let bytes = std::fs::metadata(path).map_err(|e| ArchiveError::io(path, e))?.len();
    Ok(Some(Written { rows: total, bytes, checksum: sent }))
}

/// The encoder: writes every batch it receives to `tmp`, closes the file and fsyncs it.
fn encode(
    mut rx: tokio::sync::mpsc::Receiver<RecordBatch>,
    tmp: &PathBuf,
    schema: Arc<Schema>,
    props: WriterProperties,
) -> Result<(), ArchiveError> {
    let file = File::create(tmp).map_err(|e| ArchiveError::io(tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    while let Some(batch) = rx.blocking_recv() {
        writer.write(&batch).map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    }
    writer.close().map_err(|e| ArchiveError::Parquet(e.to_string()))?;
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| ArchiveError::io(tmp, e))
}

/// The row count and key checksum of a file, read back.
pub fn read_back(path: &Path, cols: &'static [columns::Col]) -> Result<Checksum, ArchiveError> {
    let file = File::open(path).map_err(|e| ArchiveError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(BATCH).build())
        .map_err(|e| ArchiveError::Parquet(format!("{}: {e}", path.display())))?;
    let mut sum = Checksum::default();
    for batch in reader {
        let batch = batch.map_err(|e| ArchiveError::Parquet(format!("{}: {e}", path.display())))?;
        sum.merge(columns::checksum_of(cols, &batch).map_err(ArchiveError::Verify)?);
    }
    Ok(sum)
}
