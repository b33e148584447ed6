//! [`MetadataStore`] on one DynamoDB table with string keys `pk` (partition) and `sk` (sort).
//!
//! | item       | pk                          | sk                                 | TTL `expiresAt` |
//! | ---------- | --------------------------- | ---------------------------------- | --------------- |
//! | repository | `REPO#<registry>`           | `<name>`                           | —               |
//! | upload     | `UPLOAD#<id>`               | `UPLOAD`                           | `expires_at`    |
//! | segment    | `UPLOAD#<id>`               | `SEG#<offset, 20 digits>`          | + margin        |
//! | part       | `UPLOAD#<id>`               | `PART#<number, 5 digits>`          | + margin        |
//! | layer      | `LAYER#<registry>#<repo>`   | `<digest>`                         | —               |
//!
//! Every item carries its record as a JSON document in `doc`, plus `kind`, and the attributes
//! that conditions and filters look at: `version` and `expiresAt` (numbers) on uploads. Numbers
//! are zero-padded in sort keys so that string order is numeric order; repository names sort by
//! their bytes, which is `String` order.
//!
//! Every state change is one conditional write (a `PutItem` or a `TransactWriteItems`). Reads are
//! strongly consistent, so a write is visible to the next request whichever Lambda serves it.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, WriteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{backoff, sdk_failure};
use crate::error::StoreError;
use crate::ports::{
    Finish, FlushedPart, LayerRecord, MetadataStore, RepositoryRecord, SideWrite, StagedSegment,
    StoreResult, UploadRecord,
};

type Item = HashMap<String, AttributeValue>;

const PK: &str = "pk";
const SK: &str = "sk";
const DOC: &str = "doc";
const KIND: &str = "kind";
const VERSION: &str = "version";
const EXPIRES_AT: &str = "expiresAt";

const UPLOAD_SK: &str = "UPLOAD";
const SEG_PREFIX: &str = "SEG#";
const PART_PREFIX: &str = "PART#";

/// Segment and part items outlive their upload item by this much. The service pushes an
/// upload's expiry forward with every part, so an item written early in a long upload must not
/// be removed by TTL while the upload is still alive; normally `delete_upload` removes them, and
/// the TTL only catches what an interrupted cleanup left behind.
const SIDE_ITEM_TTL_MARGIN_SECS: u64 = 7 * 86_400;

/// BatchWriteItem takes at most 25 requests.
const BATCH_WRITE_MAX: usize = 25;
/// Rounds of re-sending unprocessed batch items (throttled partitions) before giving up.
const BATCH_WRITE_ROUNDS: u32 = 8;
/// Attempts of a transaction cancelled only by a concurrent transaction on the same items
/// (`TransactionConflict`), which says nothing about our condition: try again to learn it.
const TRANSACTION_ATTEMPTS: u32 = 6;

/// DynamoDB metadata store. Cheap to clone (the client is reference-counted).
#[derive(Clone, Debug)]
pub struct DynamoMetadata {
    client: Client,
    table: String,
}

impl DynamoMetadata {
    /// A store on `table` (keys `pk`/`sk`, strings) with the client settings of `sdk_config`;
    /// `AWS_ENDPOINT_URL_DYNAMODB` or `AWS_ENDPOINT_URL` point it at a local server.
    pub fn new(sdk_config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::from_client(Client::new(sdk_config), table)
    }

    /// A store on `table` through an already built client.
    pub fn from_client(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and items.

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

fn repo_pk(registry_id: &str) -> String {
    format!("REPO#{registry_id}")
}

fn upload_pk(upload_id: &str) -> String {
    format!("UPLOAD#{upload_id}")
}

fn layer_pk(registry_id: &str, repository: &str) -> String {
    format!("LAYER#{registry_id}#{repository}")
}

fn seg_sk(offset: u64) -> String {
    // u64::MAX has 20 digits.
    format!("{SEG_PREFIX}{offset:020}")
}

fn part_sk(number: u32) -> String {
    // Part numbers are 1..=10000.
    format!("{PART_PREFIX}{number:05}")
}

fn upload_key(upload_id: &str) -> Item {
    key(upload_pk(upload_id), UPLOAD_SK.to_owned())
}

fn layer_key(registry_id: &str, repository: &str, digest: &str) -> Item {
    key(layer_pk(registry_id, repository), digest.to_owned())
}

fn to_doc<T: Serialize>(record: &T) -> StoreResult<AttributeValue> {
    serde_json::to_string(record)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::Backend(format!("encoding a record: {e}")))
}

fn from_item<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    let doc = item
        .get(DOC)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Backend("item without its `doc` attribute".into()))?;
    serde_json::from_str(doc).map_err(|e| StoreError::Backend(format!("decoding a record: {e}")))
}

fn item(pk: String, sk: String, kind: &str, doc: AttributeValue) -> Item {
    let mut it = key(pk, sk);
    it.insert(KIND.to_owned(), s(kind));
    it.insert(DOC.to_owned(), doc);
    it
}

fn repository_item(r: &RepositoryRecord) -> StoreResult<Item> {
    Ok(item(
        repo_pk(&r.registry_id),
        r.name.clone(),
        "repository",
        to_doc(r)?,
    ))
}

fn upload_item(u: &UploadRecord) -> StoreResult<Item> {
    let mut it = item(
        upload_pk(&u.upload_id),
        UPLOAD_SK.to_owned(),
        "upload",
        to_doc(u)?,
    );
    it.insert(VERSION.to_owned(), n(u.version));
    it.insert(EXPIRES_AT.to_owned(), n(u.expires_at));
    Ok(it)
}

fn side_ttl(u: &UploadRecord) -> AttributeValue {
    n(u.expires_at.saturating_add(SIDE_ITEM_TTL_MARGIN_SECS))
}

fn segment_item(u: &UploadRecord, seg: &StagedSegment) -> StoreResult<Item> {
    let mut it = item(
        upload_pk(&u.upload_id),
        seg_sk(seg.offset),
        "segment",
        to_doc(seg)?,
    );
    it.insert(EXPIRES_AT.to_owned(), side_ttl(u));
    Ok(it)
}

fn part_item(u: &UploadRecord, part: &FlushedPart) -> StoreResult<Item> {
    let mut it = item(
        upload_pk(&u.upload_id),
        part_sk(part.number),
        "part",
        to_doc(part)?,
    );
    it.insert(EXPIRES_AT.to_owned(), side_ttl(u));
    Ok(it)
}

fn layer_item(l: &LayerRecord) -> StoreResult<Item> {
    Ok(item(
        layer_pk(&l.registry_id, &l.repository),
        l.digest.clone(),
        "layer",
        to_doc(l)?,
    ))
}

/// Whether the item returned by a failed condition is the very item we tried to write: then an
/// earlier attempt of this same write (an SDK retry after a lost response) was applied.
fn same_doc(existing: Option<&Item>, ours: &Item) -> bool {
    match (existing.and_then(|i| i.get(DOC)), ours.get(DOC)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Conditional writes.

/// The condition `version = upload.version - 1` with its names and values.
struct VersionCondition {
    expression: &'static str,
    names: HashMap<String, String>,
    values: Item,
}

/// `None` when `upload.version` is 0: no stored version can precede it.
fn version_condition(upload: &UploadRecord) -> Option<VersionCondition> {
    let expected = upload.version.checked_sub(1)?;
    Some(VersionCondition {
        // An absent item has no `version`, so the comparison fails for it too.
        expression: "#version = :expected",
        names: HashMap::from([("#version".to_owned(), VERSION.to_owned())]),
        values: HashMap::from([(":expected".to_owned(), n(expected))]),
    })
}

/// What a cancelled transaction said, in the order of its items.
enum Cancelled {
    /// The item at this index failed its condition; with the stored item when returned.
    Condition(usize, Option<Item>),
    /// Only concurrent transactions got in the way: worth another attempt.
    Contention,
    Other(StoreError),
}

impl DynamoMetadata {
    /// `PutItem` of `item` under `condition`. `Ok(true)` if written, `Ok(false)` if the
    /// condition failed. A condition failure that returns exactly our item counts as written:
    /// the SDK retried a put whose first answer was lost.
    async fn put_if(
        &self,
        op: &str,
        item: Item,
        condition: &str,
        names: HashMap<String, String>,
        values: Item,
    ) -> StoreResult<bool> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
            .condition_expression(condition)
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(ccf)) => {
                    Ok(same_doc(ccf.item(), &item))
                }
                _ => Err(sdk_failure(op, &e)),
            },
        }
    }

    /// `PutItem` of the upload if the stored version is `upload.version - 1`.
    async fn put_upload_if_version(&self, op: &str, upload: &UploadRecord) -> StoreResult<()> {
        let Some(cond) = version_condition(upload) else {
            return Err(StoreError::Conflict);
        };
        let written = self
            .put_if(
                op,
                upload_item(upload)?,
                cond.expression,
                cond.names,
                cond.values,
            )
            .await?;
        if written {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Create-only `PutItem`: `AlreadyExists` if an item with the key is there.
    async fn create(&self, op: &str, item: Item) -> StoreResult<()> {
        let written = self
            .put_if(
                op,
                item,
                "attribute_not_exists(pk)",
                HashMap::new(),
                HashMap::new(),
            )
            .await?;
        if written {
            Ok(())
        } else {
            Err(StoreError::AlreadyExists)
        }
    }

    /// One `TransactWriteItems`. The SDK gives each call a client request token and keeps it
    /// across its own retries, so a retry of an applied transaction answers success instead of
    /// failing its conditions.
    async fn transact(&self, op: &str, items: Vec<TransactWriteItem>) -> Result<(), Cancelled> {
        let res = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let cancelled = match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(tc)) => {
                Some(tc.cancellation_reasons())
            }
            // A call with our token is still running (an SDK retry overtook its first
            // attempt): not an answer about our condition.
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                return Err(Cancelled::Contention);
            }
            _ => None,
        };
        let Some(reasons) = cancelled else {
            return Err(Cancelled::Other(sdk_failure(op, &err)));
        };
        if let Some(i) = reasons
            .iter()
            .position(|r| r.code() == Some("ConditionalCheckFailed"))
        {
            return Err(Cancelled::Condition(i, reasons[i].item().cloned()));
        }
        if reasons
            .iter()
            .any(|r| r.code() == Some("TransactionConflict"))
        {
            return Err(Cancelled::Contention);
        }
        Err(Cancelled::Other(sdk_failure(op, &err)))
    }

    fn put_upload_versioned(
        &self,
        upload: &UploadRecord,
    ) -> StoreResult<Option<TransactWriteItem>> {
        let Some(cond) = version_condition(upload) else {
            return Ok(None);
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(upload_item(upload)?))
            .condition_expression(cond.expression)
            .set_expression_attribute_names(Some(cond.names))
            .set_expression_attribute_values(Some(cond.values))
            .build()
            .map_err(|e| StoreError::Backend(format!("building a put: {e}")))?;
        Ok(Some(TransactWriteItem::builder().put(put).build()))
    }

    fn put_plain(&self, item: Item, condition: Option<&str>) -> StoreResult<TransactWriteItem> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_owned))
            // With a condition, a cancellation reason then carries the stored item.
            .set_return_values_on_condition_check_failure(
                condition.map(|_| ReturnValuesOnConditionCheckFailure::AllOld),
            )
            .build()
            .map_err(|e| StoreError::Backend(format!("building a put: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    async fn get(&self, op: &str, key: Item) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure(op, &e))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` whose sort key satisfies `sk_condition` (`:pk` is bound
    /// here, the other values come in `values`), following every page.
    async fn query_all(
        &self,
        op: &str,
        pk: String,
        sk_condition: Option<&str>,
        mut values: Item,
        keys_only: bool,
    ) -> StoreResult<Vec<Item>> {
        values.insert(":pk".to_owned(), s(pk));
        let expression = match sk_condition {
            Some(c) => format!("pk = :pk AND {c}"),
            None => "pk = :pk".to_owned(),
        };
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&expression)
                .set_expression_attribute_values(Some(values.clone()))
                .set_projection_expression(keys_only.then(|| "pk, sk".to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_failure(op, &e))?;
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            items.extend(out.items.unwrap_or_default());
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// Deletes the items with these keys (absent ones are fine), 25 a request, re-sending what
    /// DynamoDB left unprocessed a bounded number of times.
    async fn delete_keys(&self, op: &str, keys: Vec<Item>) -> StoreResult<()> {
        let mut requests = Vec::with_capacity(keys.len());
        for k in keys {
            let del = DeleteRequest::builder()
                .set_key(Some(k))
                .build()
                .map_err(|e| StoreError::Backend(format!("building a delete: {e}")))?;
            requests.push(WriteRequest::builder().delete_request(del).build());
        }
        for chunk in requests.chunks(BATCH_WRITE_MAX) {
            let mut pending = chunk.to_vec();
            let mut round = 0;
            while !pending.is_empty() {
                if round == BATCH_WRITE_ROUNDS {
                    return Err(StoreError::Backend(format!(
                        "{op}: {} deletes still unprocessed after {round} rounds",
                        pending.len()
                    )));
                }
                if round > 0 {
                    backoff(round).await;
                }
                round += 1;
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| sdk_failure(op, &e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    /// Writes `upload` (version condition) and `side` in one transaction.
    async fn update_with_side(&self, upload: &UploadRecord, side: Item) -> StoreResult<()> {
        let op = "update_upload";
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            let Some(put_upload) = self.put_upload_versioned(upload)? else {
                return Err(StoreError::Conflict);
            };
            let items = vec![put_upload, self.put_plain(side.clone(), None)?];
            match self.transact(op, items).await {
                Ok(()) => return Ok(()),
                Err(Cancelled::Condition(..)) => return Err(StoreError::Conflict),
                Err(Cancelled::Other(e)) => return Err(e),
                Err(Cancelled::Contention) => backoff(attempt).await,
            }
        }
        Err(StoreError::Backend(format!(
            "{op}: transaction kept conflicting with concurrent ones"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// The port.

impl MetadataStore for DynamoMetadata {
    async fn create_repository(&self, repo: &RepositoryRecord) -> StoreResult<()> {
        self.create("create_repository", repository_item(repo)?)
            .await
    }

    async fn get_repository(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Option<RepositoryRecord>> {
        let k = key(repo_pk(registry_id), name.to_owned());
        self.get("get_repository", k)
            .await?
            .map(|i| from_item(&i))
            .transpose()
    }

    async fn list_repositories(&self, registry_id: &str) -> StoreResult<Vec<RepositoryRecord>> {
        // Query returns a partition in sort-key order: the names, sorted by their bytes.
        self.query_all(
            "list_repositories",
            repo_pk(registry_id),
            None,
            HashMap::new(),
            false,
        )
        .await?
        .iter()
        .map(from_item)
        .collect()
    }

    async fn delete_repository(&self, registry_id: &str, name: &str) -> StoreResult<bool> {
        let op = "delete_repository";
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(repo_pk(registry_id), name.to_owned())))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_failure(op, &e))?;
        let existed = out.attributes.is_some_and(|a| !a.is_empty());
        // Layers go even when the repository item was already gone: they are what an earlier,
        // interrupted delete left.
        let layers = self
            .query_all(op, layer_pk(registry_id, name), None, HashMap::new(), true)
            .await?;
        self.delete_keys(op, layers).await?;
        Ok(existed)
    }

    async fn create_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        self.create("create_upload", upload_item(upload)?).await
    }

    async fn get_upload(&self, upload_id: &str) -> StoreResult<Option<UploadRecord>> {
        self.get("get_upload", upload_key(upload_id))
            .await?
            .map(|i| from_item(&i))
            .transpose()
    }

    async fn update_upload(&self, upload: &UploadRecord, side: SideWrite) -> StoreResult<()> {
        match side {
            SideWrite::None => self.put_upload_if_version("update_upload", upload).await,
            SideWrite::Segment(seg) => {
                self.update_with_side(upload, segment_item(upload, &seg)?)
                    .await
            }
            SideWrite::Part(part) => {
                self.update_with_side(upload, part_item(upload, &part)?)
                    .await
            }
        }
    }

    async fn list_segments(&self, upload_id: &str, from: u64) -> StoreResult<Vec<StagedSegment>> {
        let values = HashMap::from([
            (":from".to_owned(), s(seg_sk(from))),
            (":to".to_owned(), s(seg_sk(u64::MAX))),
        ]);
        self.query_all(
            "list_segments",
            upload_pk(upload_id),
            Some("sk BETWEEN :from AND :to"),
            values,
            false,
        )
        .await?
        .iter()
        .map(from_item)
        .collect()
    }

    async fn delete_segments(&self, upload_id: &str, offsets: &[u64]) -> StoreResult<()> {
        let keys = offsets
            .iter()
            .map(|&o| key(upload_pk(upload_id), seg_sk(o)))
            .collect();
        self.delete_keys("delete_segments", keys).await
    }

    async fn list_parts(&self, upload_id: &str) -> StoreResult<Vec<FlushedPart>> {
        let values = HashMap::from([(":prefix".to_owned(), s(PART_PREFIX))]);
        self.query_all(
            "list_parts",
            upload_pk(upload_id),
            Some("begins_with(sk, :prefix)"),
            values,
            false,
        )
        .await?
        .iter()
        .map(from_item)
        .collect()
    }

    async fn finish_upload(
        &self,
        upload: &UploadRecord,
        layer: &LayerRecord,
    ) -> StoreResult<Finish> {
        let op = "finish_upload";
        let layer_it = layer_item(layer)?;
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            let Some(put_upload) = self.put_upload_versioned(upload)? else {
                return Err(StoreError::Conflict);
            };
            // The upload first: cancellation reasons come in this order.
            let items = vec![
                put_upload,
                self.put_plain(layer_it.clone(), Some("attribute_not_exists(pk)"))?,
            ];
            match self.transact(op, items).await {
                Ok(()) => return Ok(Finish::Recorded),
                // The upload moved (or is gone): nothing was written.
                Err(Cancelled::Condition(0, _)) => return Err(StoreError::Conflict),
                Err(Cancelled::Condition(_, existing)) => {
                    // The layer exists. Retire the upload alone, then answer the stored layer.
                    let existing = match existing.filter(|i| i.contains_key(DOC)) {
                        Some(i) => Some(from_item::<LayerRecord>(&i)?),
                        None => {
                            self.get_layer(&layer.registry_id, &layer.repository, &layer.digest)
                                .await?
                        }
                    };
                    // Deleted in between (the repository went): try the transaction again.
                    let Some(existing) = existing else {
                        continue;
                    };
                    self.put_upload_if_version(op, upload).await?;
                    return Ok(Finish::LayerExists(existing));
                }
                Err(Cancelled::Other(e)) => return Err(e),
                Err(Cancelled::Contention) => backoff(attempt).await,
            }
        }
        Err(StoreError::Backend(format!(
            "{op}: transaction kept conflicting with concurrent ones"
        )))
    }

    async fn delete_upload(&self, upload_id: &str) -> StoreResult<()> {
        let op = "delete_upload";
        let keys = self
            .query_all(op, upload_pk(upload_id), None, HashMap::new(), true)
            .await?;
        // The upload item last, so that an interrupted delete leaves an upload item through
        // which a later cleanup finds the rest.
        let (upload, rest): (Vec<Item>, Vec<Item>) = keys.into_iter().partition(|k| {
            k.get(SK).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(UPLOAD_SK)
        });
        self.delete_keys(op, rest).await?;
        self.delete_keys(op, upload).await
    }

    async fn expired_uploads(&self, now_secs: u64, limit: usize) -> StoreResult<Vec<UploadRecord>> {
        let op = "expired_uploads";
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        // A Scan: fine for a periodic cleanup of a table that holds few live uploads.
        let names = HashMap::from([("#expires".to_owned(), EXPIRES_AT.to_owned())]);
        let values = HashMap::from([
            (":upload".to_owned(), s(UPLOAD_SK)),
            (":now".to_owned(), n(now_secs)),
        ]);
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :upload AND #expires < :now")
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_failure(op, &e))?;
            for i in out.items.unwrap_or_default() {
                found.push(from_item(&i)?);
                if found.len() == limit {
                    return Ok(found);
                }
            }
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                return Ok(found);
            }
        }
    }

    async fn get_layer(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<LayerRecord>> {
        self.get("get_layer", layer_key(registry_id, repository, digest))
            .await?
            .map(|i| from_item(&i))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_order_like_numbers() {
        assert!(seg_sk(9) < seg_sk(10));
        assert!(seg_sk(5_368_709_120) < seg_sk(u64::MAX));
        assert_eq!(seg_sk(u64::MAX).len(), SEG_PREFIX.len() + 20);
        assert!(part_sk(2) < part_sk(10));
        assert!(part_sk(9_999) < part_sk(10_000));
    }

    #[test]
    fn version_zero_has_no_predecessor() {
        let mut u = UploadRecord {
            upload_id: "u".into(),
            registry_id: "r".into(),
            repository: "p".into(),
            blob_key: "k".into(),
            multipart_id: "m".into(),
            next_byte: 0,
            flushed_bytes: 0,
            parts_flushed: 0,
            last_part: None,
            smallest_nonfinal_part: None,
            state: crate::ports::UploadState::Open,
            version: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at: 10,
        };
        assert!(version_condition(&u).is_none());
        u.version = 3;
        let c = version_condition(&u).map(|c| c.values);
        assert_eq!(
            c.and_then(|v| v.get(":expected").cloned()),
            Some(AttributeValue::N("2".into()))
        );
        let it = upload_item(&u).ok();
        assert_eq!(
            it.as_ref().and_then(|i| i.get(EXPIRES_AT)).cloned(),
            Some(AttributeValue::N("10".into()))
        );
        let back: Option<UploadRecord> = it.and_then(|i| from_item(&i).ok());
        assert_eq!(back, Some(u));
    }
}
