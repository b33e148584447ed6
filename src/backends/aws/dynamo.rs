//! [`MetadataStore`] on one DynamoDB table with string keys `pk` (partition) and `sk` (sort).
//!
//! | item       | pk                          | sk                                 | TTL `expiresAt` |
//! | ---------- | --------------------------- | ---------------------------------- | --------------- |
//! | repository | `REPO#<registry>`           | `<name>`                           | —               |
//! | upload     | `UPLOAD#<id>`               | `UPLOAD`                           | `expires_at`    |
//! | upload ref | `REPO_UPLOAD#<registry>#<repo>` | `<upload id>`                  | + margin        |
//! | segment    | `UPLOAD#<id>`               | `SEG#<offset, 20 digits>`          | + margin        |
//! | part       | `UPLOAD#<id>`               | `PART#<number, 5 digits>`          | + margin        |
//! | layer      | `LAYER#<registry>#<repo>`   | `<digest>`                         | —               |
//! | image      | `IMAGE#<registry>#<repo>`   | `<digest>`                         | —               |
//! | tag        | `TAG#<registry>#<repo>`     | `<tag>`                            | —               |
//! | access key | `ACCESS_KEY`                | `<access key id>`                  | —               |
//!
//! Access keys are written by `DynamoKeys` (src/backends/aws/keys.rs), not by this store.
//!
//! Every item carries its record as a JSON document in `doc`, plus `kind`, and the attributes
//! that conditions and filters look at: `version` and `expiresAt` (numbers) on uploads; on
//! repositories `incarnation` (absent on the original incarnation), which `finish_upload`
//! checks in its transaction so that no layer lands in a repository deleted meanwhile; on
//! layers `mediaType`, which an image sets after the layer was recorded and which wins over the
//! one in `doc`, and `marks` and `referencedAt`, how many times and when last a PutImage marked
//! the layer referenced (src/backends/aws/gc.rs deletes unreferenced layers on condition that
//! `marks` did not move); on tags `digest`, the image the tag names; on images `version`, counting the
//! writes that made a tag name the image, and `manifest`, the manifest text kept outside `doc`
//! (inside it every quote would be escaped, and a 256 KiB manifest could then pass DynamoDB's
//! 400 KB item limit). An upload ref, written with its upload, lets DeleteRepository find the
//! repository's uploads (the table has no index); `delete_upload` removes it last. Numbers are zero-padded in sort keys so that string order is numeric
//! order; repository names, digests and tags sort by their bytes, which is `String` order.
//! Repository names and tags cannot contain `#`, so partitions of two repositories never meet.
//!
//! Every state change is one conditional write (a `PutItem`, `UpdateItem`, `DeleteItem` or a
//! `TransactWriteItems`). Reads are strongly consistent, so a write is visible to the next
//! request whichever Lambda serves it. Images keep one invariant across concurrent writers: a tag
//! never names an image that does not exist. `put_image` writes a tag only together with a
//! condition on its image (created, or its `version` bumped), and `delete_image` deletes an
//! image only at the `version` it read, with every tag it found naming it, each conditional on
//! still naming it: a tag added meanwhile moves the version and the delete starts over, a tag
//! moved elsewhere meanwhile is left alone.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update, WriteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{backoff, sdk_failure};
use crate::domain::error::StoreError;
use crate::ports::{
    Finish, FlushedPart, ImageRecord, LayerRecord, LayerReference, MetadataStore, PutImageOutcome,
    RepositoryRecord, SideWrite, StagedSegment, StoreResult, TagRecord, UnreferencedLayer,
    UploadRecord,
};

type Item = HashMap<String, AttributeValue>;

const PK: &str = "pk";
const SK: &str = "sk";
const DOC: &str = "doc";
const KIND: &str = "kind";
const VERSION: &str = "version";
const EXPIRES_AT: &str = "expiresAt";
const MEDIA_TYPE: &str = "mediaType";
const DIGEST: &str = "digest";
const MANIFEST: &str = "manifest";
const INCARNATION: &str = "incarnation";
/// On layers: how many times images marked the layer referenced, and when last (ms).
const MARKS: &str = "marks";
const REFERENCED_AT: &str = "referencedAt";
/// Marks of one PutImage sent at once.
const MARK_CONCURRENCY: usize = 16;
/// A fresh id per `put_image` call on an image item, so that an SDK retry of a create whose
/// answer was lost recognises its own item instead of reporting it as already there.
const WRITE_ID: &str = "writeId";

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
/// TransactWriteItems takes at most 100 items.
const TRANSACT_MAX: usize = 100;
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

/// `pk`, `sk` of an item's key, for the context of a failure.
fn key_text(item: &Item) -> String {
    let attr = |name| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .map_or("?", String::as_str)
    };
    format!("{} {}", attr(PK), attr(SK))
}

fn repo_pk(registry_id: &str) -> String {
    format!("REPO#{registry_id}")
}

fn upload_pk(upload_id: &str) -> String {
    format!("UPLOAD#{upload_id}")
}

fn repo_upload_pk(registry_id: &str, repository: &str) -> String {
    format!("REPO_UPLOAD#{registry_id}#{repository}")
}

fn layer_pk(registry_id: &str, repository: &str) -> String {
    format!("LAYER#{registry_id}#{repository}")
}

fn image_pk(registry_id: &str, repository: &str) -> String {
    format!("IMAGE#{registry_id}#{repository}")
}

fn tag_pk(registry_id: &str, repository: &str) -> String {
    format!("TAG#{registry_id}#{repository}")
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

fn image_key(registry_id: &str, repository: &str, digest: &str) -> Item {
    key(image_pk(registry_id, repository), digest.to_owned())
}

fn tag_key(registry_id: &str, repository: &str, tag: &str) -> Item {
    key(tag_pk(registry_id, repository), tag.to_owned())
}

fn to_doc<T: Serialize>(record: &T) -> StoreResult<AttributeValue> {
    serde_json::to_string(record)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::backend("encoding a record", e))
}

fn from_item<T: DeserializeOwned>(item: &Item) -> StoreResult<T> {
    let doc = item.get(DOC).and_then(|v| v.as_s().ok()).ok_or_else(|| {
        StoreError::failure(format!(
            "item {} without its `doc` attribute",
            key_text(item)
        ))
    })?;
    serde_json::from_str(doc)
        .map_err(|e| StoreError::backend(format!("decoding the record of {}", key_text(item)), e))
}

fn item(pk: String, sk: String, kind: &str, doc: AttributeValue) -> Item {
    let mut it = key(pk, sk);
    it.insert(KIND.to_owned(), s(kind));
    it.insert(DOC.to_owned(), doc);
    it
}

fn repository_item(r: &RepositoryRecord) -> StoreResult<Item> {
    let mut it = item(
        repo_pk(&r.registry_id),
        r.name.clone(),
        "repository",
        to_doc(r)?,
    );
    if !r.incarnation.is_empty() {
        it.insert(INCARNATION.to_owned(), s(&r.incarnation));
    }
    Ok(it)
}

/// The ref that lists upload `u` under its repository.
fn repo_upload_item(u: &UploadRecord) -> Item {
    let mut it = key(
        repo_upload_pk(&u.registry_id, &u.repository),
        u.upload_id.clone(),
    );
    it.insert(KIND.to_owned(), s("repository-upload"));
    it.insert(EXPIRES_AT.to_owned(), side_ttl(u));
    it
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
    let mut it = item(
        layer_pk(&l.registry_id, &l.repository),
        l.digest.clone(),
        "layer",
        to_doc(l)?,
    );
    if let Some(mt) = &l.media_type {
        it.insert(MEDIA_TYPE.to_owned(), s(mt));
    }
    Ok(it)
}

/// A layer as stored: `set_layer_media_type` updates the `mediaType` attribute, not `doc`.
fn layer_from_item(item: &Item) -> StoreResult<LayerRecord> {
    let mut layer: LayerRecord = from_item(item)?;
    if let Some(mt) = string_attr(item, MEDIA_TYPE) {
        layer.media_type = Some(mt.to_owned());
    }
    Ok(layer)
}

/// An image item at `version`, its manifest text in an attribute of its own.
fn image_item(i: &ImageRecord, version: u64, write_id: &str) -> StoreResult<Item> {
    let manifest = i.manifest.as_deref();
    let doc = to_doc(&ImageRecord {
        manifest: None,
        ..i.clone()
    })?;
    let mut it = item(
        image_pk(&i.registry_id, &i.repository),
        i.digest.clone(),
        "image",
        doc,
    );
    if let Some(m) = manifest {
        it.insert(MANIFEST.to_owned(), s(m));
    }
    it.insert(VERSION.to_owned(), n(version));
    it.insert(WRITE_ID.to_owned(), s(write_id));
    Ok(it)
}

fn image_from_item(item: &Item) -> StoreResult<ImageRecord> {
    let mut image: ImageRecord = from_item(item)?;
    if let Some(m) = string_attr(item, MANIFEST) {
        image.manifest = Some(m.to_owned());
    }
    Ok(image)
}

fn tag_item(t: &TagRecord) -> StoreResult<Item> {
    let mut it = item(
        tag_pk(&t.registry_id, &t.repository),
        t.tag.clone(),
        "tag",
        to_doc(t)?,
    );
    it.insert(DIGEST.to_owned(), s(&t.digest));
    Ok(it)
}

fn string_attr<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn number_attr(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// The condition an image item must still meet for a delete of what was read to go ahead:
/// present at the `version` read, or still absent.
fn image_unchanged(version: Option<u64>) -> (&'static str, Item) {
    match version {
        // Written by hand or by an older build: no version to compare.
        Some(0) => (
            "attribute_exists(pk) AND attribute_not_exists(#version)",
            HashMap::new(),
        ),
        Some(v) => (
            "#version = :version",
            HashMap::from([(":version".to_owned(), n(v))]),
        ),
        None => ("attribute_not_exists(pk)", HashMap::new()),
    }
}

fn built<T, E>(what: &str, res: Result<T, E>) -> StoreResult<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    res.map_err(|e| StoreError::backend(format!("building {what}"), e))
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
                _ => Err(sdk_failure(format!("{op} {}", key_text(&item)), e)),
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
            return Err(Cancelled::Other(sdk_failure(op, err)));
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
        Err(Cancelled::Other(sdk_failure(op, err)))
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
            .map_err(|e| StoreError::backend("building a put", e))?;
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
            .map_err(|e| StoreError::backend("building a put", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    async fn get(&self, op: &str, key: Item) -> StoreResult<Option<Item>> {
        let context = || format!("{op} {}", key_text(&key));
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure(context(), e))?;
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
        self.query_pages(op, &expression, None, HashMap::new(), values, keys_only)
            .await
    }

    /// The keys of the tags of a repository that name `digest`.
    async fn tags_naming(
        &self,
        op: &str,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Vec<Item>> {
        let names = HashMap::from([("#digest".to_owned(), DIGEST.to_owned())]);
        let values = HashMap::from([
            (":pk".to_owned(), s(tag_pk(registry_id, repository))),
            (":digest".to_owned(), s(digest)),
        ]);
        self.query_pages(
            op,
            "pk = :pk",
            Some("#digest = :digest"),
            names,
            values,
            true,
        )
        .await
    }

    /// A `Query` followed through every page (`LastEvaluatedKey`), optionally filtered.
    async fn query_pages(
        &self,
        op: &str,
        key_condition: &str,
        filter: Option<&str>,
        names: HashMap<String, String>,
        values: Item,
        keys_only: bool,
    ) -> StoreResult<Vec<Item>> {
        let names = (!names.is_empty()).then_some(names);
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(key_condition)
                .set_filter_expression(filter.map(str::to_owned))
                .set_expression_attribute_names(names.clone())
                .set_expression_attribute_values(Some(values.clone()))
                .set_projection_expression(keys_only.then(|| "pk, sk".to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    let pk = values.get(":pk").and_then(|v| v.as_s().ok());
                    sdk_failure(format!("{op} query {}", pk.map_or("?", String::as_str)), e)
                })?;
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
                .map_err(|e| StoreError::backend("building a delete", e))?;
            requests.push(WriteRequest::builder().delete_request(del).build());
        }
        for chunk in requests.chunks(BATCH_WRITE_MAX) {
            let mut pending = chunk.to_vec();
            let mut round = 0;
            while !pending.is_empty() {
                if round == BATCH_WRITE_ROUNDS {
                    return Err(StoreError::failure(format!(
                        "{op}: {} deletes still unprocessed after {round} rounds",
                        pending.len()
                    )));
                }
                if round > 0 {
                    backoff(round).await;
                }
                round += 1;
                let context = format!(
                    "{op}: {} deletes from {}",
                    pending.len(),
                    pending
                        .first()
                        .and_then(|r| r.delete_request())
                        .map_or_else(String::new, |d| key_text(d.key()))
                );
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| sdk_failure(context, e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
            }
        }
        Ok(())
    }

    /// Whether the image item exists, and its `version` (0 for an item without one).
    async fn image_version(&self, op: &str, key: Item) -> StoreResult<Option<u64>> {
        let context = format!("{op} {}", key_text(&key));
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .projection_expression("pk, #version")
            .expression_attribute_names("#version", VERSION)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure(context, e))?;
        Ok(out
            .item
            .filter(|i| !i.is_empty())
            .map(|i| number_attr(&i, VERSION).unwrap_or(0)))
    }

    /// `put_image` without a tag: one create-only `PutItem`.
    async fn put_untagged_image(&self, image: &ImageRecord) -> StoreResult<PutImageOutcome> {
        let op = "put_image";
        let write_id = uuid::Uuid::new_v4().to_string();
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(image_item(image, 1, &write_id)?))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(PutImageOutcome::Stored),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(ccf)) => {
                    let ours = ccf
                        .item()
                        .and_then(|i| string_attr(i, WRITE_ID))
                        .is_some_and(|w| w == write_id);
                    Ok(if ours {
                        PutImageOutcome::Stored
                    } else {
                        PutImageOutcome::AlreadyExists
                    })
                }
                _ => Err(sdk_failure(
                    format!(
                        "{op} {}/{}@{}",
                        image.registry_id, image.repository, image.digest
                    ),
                    e,
                )),
            },
        }
    }

    /// The image half of a tagged `put_image`: create the image if it was absent, or bump the
    /// version of the one there, so that a concurrent `delete_image` of it starts over and sees
    /// the tag.
    fn image_write(
        &self,
        image: &ImageRecord,
        exists: bool,
        write_id: &str,
    ) -> StoreResult<TransactWriteItem> {
        if !exists {
            return self.put_plain(
                image_item(image, 1, write_id)?,
                Some("attribute_not_exists(pk)"),
            );
        }
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(image_key(
                &image.registry_id,
                &image.repository,
                &image.digest,
            )))
            .update_expression("ADD #version :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":one", n(1))
            .build();
        Ok(TransactWriteItem::builder()
            .update(built("an update", update)?)
            .build())
    }

    /// The tag half of a tagged `put_image`. Its condition fails exactly when the outcome is
    /// not `Stored`: the tag already names the (existing) image, or names another one and tags
    /// are immutable.
    fn tag_write(
        &self,
        tag: &TagRecord,
        image_exists: bool,
        immutable_tags: bool,
    ) -> StoreResult<TransactWriteItem> {
        let condition = match (image_exists, immutable_tags) {
            (true, false) => Some("attribute_not_exists(pk) OR #digest <> :digest"),
            (true, true) => Some("attribute_not_exists(pk)"),
            // A tag may name this digest only if its image went by some other way than
            // `delete_image` (which takes its tags along); the port then has the tag rewritten.
            (false, true) => Some("attribute_not_exists(pk) OR #digest = :digest"),
            (false, false) => None,
        };
        let mut put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(tag_item(tag)?));
        if let Some(c) = condition {
            put = put
                .condition_expression(c)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if c.contains("#digest") {
                put = put
                    .expression_attribute_names("#digest", DIGEST)
                    .expression_attribute_values(":digest", s(&tag.digest));
            }
        }
        Ok(TransactWriteItem::builder()
            .put(built("a put", put.build())?)
            .build())
    }

    /// Deletes the image at `version` (`None`: asserts it is still absent) and the tags `tags`,
    /// each only if it still names `digest`. One transaction when they fit (99 tags); beyond
    /// that the tags go in several, each under the same condition on the image, and the image
    /// with the last.
    async fn delete_image_and_tags(
        &self,
        op: &str,
        image: Item,
        version: Option<u64>,
        digest: &str,
        tags: &[Item],
    ) -> Result<(), Cancelled> {
        let chunks: Vec<&[Item]> = if tags.is_empty() {
            vec![&[]]
        } else {
            tags.chunks(TRANSACT_MAX - 1).collect()
        };
        let (image_condition, image_values) = image_unchanged(version);
        let image_values = (!image_values.is_empty()).then_some(image_values);
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let names =
                version.map(|_| HashMap::from([("#version".to_owned(), VERSION.to_owned())]));
            let image_op = if last && version.is_some() {
                let del = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(image.clone()))
                    .condition_expression(image_condition)
                    .set_expression_attribute_names(names)
                    .set_expression_attribute_values(image_values.clone())
                    .build();
                TransactWriteItem::builder()
                    .delete(built("a delete", del).map_err(Cancelled::Other)?)
                    .build()
            } else {
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(image.clone()))
                    .condition_expression(image_condition)
                    .set_expression_attribute_names(names)
                    .set_expression_attribute_values(image_values.clone())
                    .build();
                TransactWriteItem::builder()
                    .condition_check(built("a condition check", check).map_err(Cancelled::Other)?)
                    .build()
            };
            let mut items = vec![image_op];
            for tag in *chunk {
                let del = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(tag.clone()))
                    .condition_expression("#digest = :digest")
                    .expression_attribute_names("#digest", DIGEST)
                    .expression_attribute_values(":digest", s(digest))
                    .build();
                items.push(
                    TransactWriteItem::builder()
                        .delete(built("a delete", del).map_err(Cancelled::Other)?)
                        .build(),
                );
            }
            self.transact(op, items).await?;
        }
        Ok(())
    }

    /// A transaction item that holds only while the upload's repository is the incarnation the
    /// upload was started in.
    fn repository_is(&self, upload: &UploadRecord) -> StoreResult<TransactWriteItem> {
        self.repository_is_incarnation(
            &upload.registry_id,
            &upload.repository,
            &upload.repository_incarnation,
        )
    }

    /// A transaction item that holds only while repository `name` is the incarnation
    /// `incarnation`.
    fn repository_is_incarnation(
        &self,
        registry_id: &str,
        name: &str,
        incarnation: &str,
    ) -> StoreResult<TransactWriteItem> {
        let k = key(repo_pk(registry_id), name.to_owned());
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(k))
            .expression_attribute_names("#incarnation", INCARNATION);
        let check = if incarnation.is_empty() {
            // The original incarnation: a repository item written without one.
            check
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(#incarnation)")
        } else {
            check
                .condition_expression("#incarnation = :incarnation")
                .expression_attribute_values(":incarnation", s(incarnation))
        };
        Ok(TransactWriteItem::builder()
            .condition_check(built("a condition check", check.build())?)
            .build())
    }

    /// Whether the upload's repository is gone or another incarnation now (a consistent read).
    async fn repository_gone(&self, upload: &UploadRecord) -> StoreResult<bool> {
        let repo = self
            .get_repository(&upload.registry_id, &upload.repository)
            .await?;
        Ok(repo.is_none_or(|r| r.incarnation != upload.repository_incarnation))
    }

    /// Whether repository `name` is gone or another incarnation than `incarnation` (a
    /// consistent read).
    async fn repository_not(
        &self,
        registry_id: &str,
        name: &str,
        incarnation: &str,
    ) -> StoreResult<bool> {
        let repo = self.get_repository(registry_id, name).await?;
        Ok(repo.is_none_or(|r| r.incarnation != incarnation))
    }

    /// `put_image`, on condition that the repository is `incarnation` when one is named: a
    /// condition check on the repository item then joins the write's transaction.
    async fn put_image_if(
        &self,
        incarnation: Option<&str>,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        let op = "put_image";
        let (registry, name) = (image.registry_id.as_str(), image.repository.as_str());
        let repo_check = incarnation
            .map(|inc| self.repository_is_incarnation(registry, name, inc))
            .transpose()?;
        let Some(tag) = tag else {
            return match (incarnation, repo_check) {
                (Some(inc), Some(check)) => self.put_untagged_image_in(inc, image, check).await,
                _ => self.put_untagged_image(image).await,
            };
        };
        let tag_record = TagRecord {
            registry_id: image.registry_id.clone(),
            repository: image.repository.clone(),
            tag: tag.to_owned(),
            digest: image.digest.clone(),
            updated_at_ms: image.pushed_at_ms,
        };
        let write_id = uuid::Uuid::new_v4().to_string();
        let key = image_key(&image.registry_id, &image.repository, &image.digest);
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            // The read only chooses which transaction to try; its conditions decide.
            let exists = self.image_version(op, key.clone()).await?.is_some();
            // The image first: cancellation reasons come in this order.
            let mut items = vec![
                self.image_write(image, exists, &write_id)?,
                self.tag_write(&tag_record, exists, immutable_tags)?,
            ];
            items.extend(repo_check.clone());
            let res = self.transact(op, items).await;
            if let Some(inc) = incarnation
                && matches!(res, Err(Cancelled::Condition(..)))
                && self.repository_not(registry, name, inc).await?
            {
                // Whichever condition was reported first, nothing was written.
                return Ok(PutImageOutcome::RepositoryGone);
            }
            match res {
                Ok(()) => return Ok(PutImageOutcome::Stored),
                // The image appeared or went since the read: look again.
                Err(Cancelled::Condition(0, _)) => backoff(attempt).await,
                // The repository changed between the transaction and the read: look again.
                Err(Cancelled::Condition(2, _)) => backoff(attempt).await,
                Err(Cancelled::Condition(_, stored)) => {
                    let named = match stored.as_ref().and_then(|i| string_attr(i, DIGEST)) {
                        Some(d) => Some(d.to_owned()),
                        None => self
                            .get_tag(&image.registry_id, &image.repository, tag)
                            .await?
                            .map(|t| t.digest),
                    };
                    match named {
                        // Only reachable with the image there: its condition held.
                        Some(d) if d == image.digest => return Ok(PutImageOutcome::AlreadyExists),
                        Some(d) if immutable_tags => {
                            return Ok(PutImageOutcome::TagImmutable { digest: d });
                        }
                        // The tag moved or went since the transaction: try again.
                        _ => backoff(attempt).await,
                    }
                }
                Err(Cancelled::Other(e)) => return Err(e),
                Err(Cancelled::Contention) => backoff(attempt).await,
            }
        }
        Err(StoreError::failure(format!(
            "{op}: the image and its tag kept changing under concurrent writes"
        )))
    }

    /// `put_image` without a tag, on condition that the repository is `incarnation`: the
    /// create-only put and the check on the repository in one transaction.
    async fn put_untagged_image_in(
        &self,
        incarnation: &str,
        image: &ImageRecord,
        repo_check: TransactWriteItem,
    ) -> StoreResult<PutImageOutcome> {
        let op = "put_image";
        let (registry, name) = (image.registry_id.as_str(), image.repository.as_str());
        let write_id = uuid::Uuid::new_v4().to_string();
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            let items = vec![
                self.put_plain(
                    image_item(image, 1, &write_id)?,
                    Some("attribute_not_exists(pk)"),
                )?,
                repo_check.clone(),
            ];
            let res = self.transact(op, items).await;
            if matches!(res, Err(Cancelled::Condition(..)))
                && self.repository_not(registry, name, incarnation).await?
            {
                return Ok(PutImageOutcome::RepositoryGone);
            }
            match res {
                Ok(()) => return Ok(PutImageOutcome::Stored),
                Err(Cancelled::Condition(0, stored)) => {
                    // An SDK retry of our own applied transaction finds our item.
                    let ours = stored
                        .as_ref()
                        .and_then(|i| string_attr(i, WRITE_ID))
                        .is_some_and(|w| w == write_id);
                    return Ok(if ours {
                        PutImageOutcome::Stored
                    } else {
                        PutImageOutcome::AlreadyExists
                    });
                }
                Err(Cancelled::Condition(..)) | Err(Cancelled::Contention) => {
                    backoff(attempt).await
                }
                Err(Cancelled::Other(e)) => return Err(e),
            }
        }
        Err(StoreError::failure(format!(
            "{op}: transaction kept conflicting with concurrent ones"
        )))
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
        Err(StoreError::failure(format!(
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
            .map_err(|e| sdk_failure(format!("{op} {registry_id}/{name}"), e))?;
        let existed = out.attributes.is_some_and(|a| !a.is_empty());
        // What the repository held goes even when its item was already gone: that is what an
        // earlier, interrupted delete left. Tags before images, so that an interruption never
        // leaves a tag naming a deleted image.
        for pk in [
            tag_pk(registry_id, name),
            image_pk(registry_id, name),
            layer_pk(registry_id, name),
        ] {
            let keys = self.query_all(op, pk, None, HashMap::new(), true).await?;
            self.delete_keys(op, keys).await?;
        }
        Ok(existed)
    }

    async fn repository_uploads(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Vec<UploadRecord>> {
        let op = "repository_uploads";
        let refs = self
            .query_all(
                op,
                repo_upload_pk(registry_id, name),
                None,
                HashMap::new(),
                true,
            )
            .await?;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            // A ref whose upload is gone was left by an interrupted delete_upload.
            if let Some(id) = string_attr(&r, SK)
                && let Some(upload) = self.get_upload(id).await?
            {
                out.push(upload);
            }
        }
        Ok(out)
    }

    async fn create_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        let op = "create_upload";
        let ours = upload_item(upload)?;
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            // The upload first: cancellation reasons come in this order.
            let items = vec![
                self.put_plain(ours.clone(), Some("attribute_not_exists(pk)"))?,
                self.put_plain(repo_upload_item(upload), None)?,
            ];
            match self.transact(op, items).await {
                Ok(()) => return Ok(()),
                // Exactly our item: an earlier attempt of this create (its answer lost) wrote
                // it, with its ref.
                Err(Cancelled::Condition(_, existing)) if same_doc(existing.as_ref(), &ours) => {
                    return Ok(());
                }
                Err(Cancelled::Condition(..)) => return Err(StoreError::AlreadyExists),
                Err(Cancelled::Other(e)) => return Err(e),
                Err(Cancelled::Contention) => backoff(attempt).await,
            }
        }
        Err(StoreError::failure(format!(
            "{op}: transaction kept conflicting with concurrent ones"
        )))
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
                self.repository_is(upload)?,
            ];
            let res = self.transact(op, items).await;
            if matches!(res, Err(Cancelled::Condition(..))) && self.repository_gone(upload).await? {
                // Whichever condition was reported first, nothing was written.
                return Ok(Finish::RepositoryGone);
            }
            match res {
                Ok(()) => return Ok(Finish::Recorded),
                // The upload moved (or is gone): nothing was written.
                Err(Cancelled::Condition(0, _)) => return Err(StoreError::Conflict),
                // The repository changed between the transaction and the read: look again.
                Err(Cancelled::Condition(2, _)) => backoff(attempt).await,
                Err(Cancelled::Condition(_, existing)) => {
                    // The layer exists. Retire the upload alone, then answer the stored layer.
                    let existing = match existing.filter(|i| i.contains_key(DOC)) {
                        Some(i) => Some(layer_from_item(&i)?),
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
        Err(StoreError::failure(format!(
            "{op}: transaction kept conflicting with concurrent ones"
        )))
    }

    async fn delete_upload(&self, upload_id: &str) -> StoreResult<()> {
        let op = "delete_upload";
        let items = self
            .query_all(op, upload_pk(upload_id), None, HashMap::new(), false)
            .await?;
        let only_key = |i: &Item| {
            key(
                string_attr(i, PK).unwrap_or_default().to_owned(),
                string_attr(i, SK).unwrap_or_default().to_owned(),
            )
        };
        // The upload item last, so that an interrupted delete leaves an upload item through
        // which a later cleanup finds the rest; its ref under the repository after it.
        let (upload, rest): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| string_attr(i, SK) == Some(UPLOAD_SK));
        self.delete_keys(op, rest.iter().map(only_key).collect())
            .await?;
        let refs = upload
            .iter()
            .map(from_item::<UploadRecord>)
            .collect::<StoreResult<Vec<_>>>()?
            .into_iter()
            .map(|u| key(repo_upload_pk(&u.registry_id, &u.repository), u.upload_id))
            .collect();
        self.delete_keys(op, upload.iter().map(only_key).collect())
            .await?;
        self.delete_keys(op, refs).await
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
                .map_err(|e| sdk_failure(op, e))?;
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
            .map(|i| layer_from_item(&i))
            .transpose()
    }
    async fn set_layer_media_type(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
        media_type: &str,
    ) -> StoreResult<()> {
        let op = "set_layer_media_type";
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(layer_key(registry_id, repository, digest)))
            .update_expression("SET #mediaType = :mediaType")
            // Without the condition, an update of an absent layer would create a stub item.
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#mediaType", MEDIA_TYPE)
            .expression_attribute_values(":mediaType", s(media_type))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(()),
                _ => Err(sdk_failure(
                    format!("{op} {registry_id}/{repository}@{digest}"),
                    e,
                )),
            },
        }
    }

    async fn mark_layers_referenced(
        &self,
        registry_id: &str,
        repository: &str,
        layers: &[LayerReference],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let mut missing = Vec::new();
        for chunk in layers.chunks(MARK_CONCURRENCY) {
            let marks = chunk
                .iter()
                .map(|r| self.mark_layer(registry_id, repository, r, now_ms));
            for marked in futures_util::future::join_all(marks).await {
                missing.extend(marked?);
            }
        }
        Ok(missing)
    }

    async fn put_image(
        &self,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(None, image, tag, immutable_tags).await
    }

    async fn put_image_in(
        &self,
        incarnation: &str,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(Some(incarnation), image, tag, immutable_tags)
            .await
    }

    async fn get_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<ImageRecord>> {
        self.get("get_image", image_key(registry_id, repository, digest))
            .await?
            .map(|i| image_from_item(&i))
            .transpose()
    }

    async fn get_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
    ) -> StoreResult<Option<TagRecord>> {
        self.get("get_tag", tag_key(registry_id, repository, tag))
            .await?
            .map(|i| from_item(&i))
            .transpose()
    }

    async fn list_images(
        &self,
        registry_id: &str,
        repository: &str,
    ) -> StoreResult<Vec<ImageRecord>> {
        // A partition comes in sort-key order: by digest.
        self.query_all(
            "list_images",
            image_pk(registry_id, repository),
            None,
            HashMap::new(),
            false,
        )
        .await?
        .iter()
        .map(image_from_item)
        .collect()
    }

    async fn list_tags(&self, registry_id: &str, repository: &str) -> StoreResult<Vec<TagRecord>> {
        self.query_all(
            "list_tags",
            tag_pk(registry_id, repository),
            None,
            HashMap::new(),
            false,
        )
        .await?
        .iter()
        .map(from_item)
        .collect()
    }

    async fn delete_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let op = "delete_tag";
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(tag_key(registry_id, repository, tag)))
            .condition_expression("#digest = :digest")
            .expression_attribute_names("#digest", DIGEST)
            .expression_attribute_values(":digest", s(digest))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(_)) => Ok(false),
                _ => Err(sdk_failure(
                    format!("{op} {registry_id}/{repository}:{tag}"),
                    e,
                )),
            },
        }
    }

    async fn delete_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let op = "delete_image";
        let key = image_key(registry_id, repository, digest);
        for attempt in 1..=TRANSACTION_ATTEMPTS {
            let version = self.image_version(op, key.clone()).await?;
            let tags = self
                .tags_naming(op, registry_id, repository, digest)
                .await?;
            if version.is_none() && tags.is_empty() {
                return Ok(false);
            }
            match self
                .delete_image_and_tags(op, key.clone(), version, digest, &tags)
                .await
            {
                Ok(()) => return Ok(version.is_some()),
                // A tag was added, moved or removed, or the image changed: read again.
                Err(Cancelled::Condition(..) | Cancelled::Contention) => backoff(attempt).await,
                Err(Cancelled::Other(e)) => return Err(e),
            }
        }
        Err(StoreError::failure(format!(
            "{op}: the image and its tags kept changing under concurrent writes"
        )))
    }
}

impl DynamoMetadata {
    /// One layer's mark (`mark_layers_referenced`): an `UpdateItem` on condition that the layer
    /// exists. `Some(digest)` when it does not.
    async fn mark_layer(
        &self,
        registry_id: &str,
        repository: &str,
        layer: &LayerReference,
        now_ms: u64,
    ) -> StoreResult<Option<String>> {
        let mut names = HashMap::from([
            ("#marks".to_owned(), MARKS.to_owned()),
            ("#referencedAt".to_owned(), REFERENCED_AT.to_owned()),
        ]);
        let mut values = HashMap::from([(":one".to_owned(), n(1)), (":now".to_owned(), n(now_ms))]);
        let mut update = "SET #referencedAt = :now".to_owned();
        if let Some(mt) = &layer.media_type {
            names.insert("#mediaType".to_owned(), MEDIA_TYPE.to_owned());
            values.insert(":mediaType".to_owned(), s(mt));
            update.push_str(", #mediaType = :mediaType");
        }
        update.push_str(" ADD #marks :one");
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(layer_key(registry_id, repository, &layer.digest)))
            .update_expression(update)
            // Without the condition, an update of an absent layer would create a stub item.
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => {
                    Ok(Some(layer.digest.clone()))
                }
                _ => Err(sdk_failure(
                    format!(
                        "mark_layers_referenced {registry_id}/{repository}@{}",
                        layer.digest
                    ),
                    e,
                )),
            },
        }
    }

    /// Deletes the layer item `layer` names if it is still exactly as read: the same `doc` and
    /// the same count of marks (none since). `Ok(false)` when it changed or is gone.
    pub(super) async fn remove_unreferenced_layer(
        &self,
        layer: &UnreferencedLayer,
    ) -> StoreResult<bool> {
        let mut names = HashMap::from([("#doc".to_owned(), DOC.to_owned())]);
        let mut values = HashMap::from([(":doc".to_owned(), s(&layer.stored))]);
        names.insert("#marks".to_owned(), MARKS.to_owned());
        let condition = if layer.marks == 0 {
            "#doc = :doc AND attribute_not_exists(#marks)"
        } else {
            values.insert(":marks".to_owned(), n(layer.marks));
            "#doc = :doc AND #marks = :marks"
        };
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(layer_key(
                &layer.registry_id,
                &layer.repository,
                &layer.digest,
            )))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(DeleteItemError::ConditionalCheckFailedException(_)) => Ok(false),
                _ => Err(sdk_failure(
                    format!(
                        "gc delete layer {}/{}@{}",
                        layer.registry_id, layer.repository, layer.digest
                    ),
                    e,
                )),
            },
        }
    }

    /// Everything the table refers to in the bucket, for `super::gc`: a strongly consistent
    /// Scan of at most `max_pages` pages (1 MB each), `None` when the table holds more (then the
    /// collector removes nothing: a partial view would make owned bytes look unowned).
    pub(super) async fn owned(&self, max_pages: u32) -> StoreResult<Option<super::gc::Owned>> {
        let op = "gc scan";
        let mut owned = super::gc::Owned::default();
        // Only what identifies the records: an image's manifest text stays out of the answer.
        let names = HashMap::from([
            ("#pk".to_owned(), PK.to_owned()),
            ("#sk".to_owned(), SK.to_owned()),
            ("#kind".to_owned(), KIND.to_owned()),
            ("#doc".to_owned(), DOC.to_owned()),
            ("#marks".to_owned(), MARKS.to_owned()),
            ("#referencedAt".to_owned(), REFERENCED_AT.to_owned()),
        ]);
        let mut start: Option<Item> = None;
        for _ in 0..max_pages {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .projection_expression("#pk, #sk, #kind, #doc, #marks, #referencedAt")
                .set_expression_attribute_names(Some(names.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_failure(op, e))?;
            for i in out.items.unwrap_or_default() {
                match string_attr(&i, KIND) {
                    Some("upload") => {
                        let u: UploadRecord = from_item(&i)?;
                        owned.multipart_ids.insert(u.multipart_id);
                        owned.upload_blobs.insert(u.blob_key);
                    }
                    Some("segment") => {
                        let seg: StagedSegment = from_item(&i)?;
                        owned.segment_keys.insert(seg.key);
                    }
                    Some("layer") => {
                        let l: LayerRecord = from_item(&i)?;
                        owned.layer_keys.insert(l.blob_key.clone());
                        owned.layers.push(super::gc::ScannedLayer {
                            stored: string_attr(&i, DOC).unwrap_or_default().to_owned(),
                            marks: number_attr(&i, MARKS).unwrap_or(0),
                            referenced_at_ms: number_attr(&i, REFERENCED_AT),
                            record: l,
                        });
                    }
                    Some("image") => {
                        let im: ImageRecord = from_item(&i)?;
                        let repository = (im.registry_id.clone(), im.repository.clone());
                        let entry = owned
                            .referenced
                            .entry(repository)
                            .or_insert_with(|| Some(Default::default()));
                        if im.blobs_unknown() {
                            *entry = None;
                        } else if let Some(set) = entry {
                            set.extend(im.blobs);
                        }
                        owned.manifest_keys.extend(im.manifest_key);
                    }
                    _ => {}
                }
            }
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                return Ok(Some(owned));
            }
        }
        Ok(None)
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
    fn image_items_keep_the_manifest_beside_the_doc() {
        let image = ImageRecord {
            registry_id: "123456789012".into(),
            repository: "a/b".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            manifest: Some(r#"{"schemaVersion":2,"q":"\"\""}"#.into()),
            manifest_key: None,
            media_type: crate::domain::model::ManifestMediaType::OciManifest,
            artifact_media_type: None,
            size: 3,
            pushed_at_ms: 4,
            blobs: vec![format!("sha256:{}", "cd".repeat(32))],
            manifests: Vec::new(),
            subject: None,
        };
        let it = image_item(&image, 7, "w").ok();
        let it = it.as_ref();
        assert_eq!(
            it.and_then(|i| string_attr(i, MANIFEST)),
            image.manifest.as_deref()
        );
        assert!(
            it.and_then(|i| string_attr(i, DOC))
                .is_some_and(|d| !d.contains("schemaVersion")),
            "the manifest is not stored twice"
        );
        assert_eq!(it.and_then(|i| number_attr(i, VERSION)), Some(7));
        assert_eq!(
            it.and_then(|i| image_from_item(i).ok()),
            Some(image.clone())
        );
        let big = ImageRecord {
            manifest: None,
            manifest_key: Some("manifests/x".into()),
            ..image
        };
        let it = image_item(&big, 1, "w").ok();
        assert!(it.as_ref().is_some_and(|i| !i.contains_key(MANIFEST)));
        assert_eq!(it.and_then(|i| image_from_item(&i).ok()), Some(big));
    }

    #[test]
    fn a_layer_media_type_set_later_wins_over_the_doc() {
        let layer = LayerRecord {
            registry_id: "r".into(),
            repository: "p".into(),
            digest: "d".into(),
            blob_key: "k".into(),
            size: 1,
            media_type: None,
            created_at_ms: 2,
        };
        let mut it = layer_item(&layer).ok().unwrap_or_default();
        assert!(!it.contains_key(MEDIA_TYPE));
        assert_eq!(layer_from_item(&it).ok(), Some(layer.clone()));
        it.insert(MEDIA_TYPE.to_owned(), s("m"));
        assert_eq!(
            layer_from_item(&it).ok().and_then(|l| l.media_type),
            Some("m".to_owned())
        );
    }

    #[test]
    fn version_zero_has_no_predecessor() {
        let mut u = UploadRecord {
            upload_id: "u".into(),
            registry_id: "r".into(),
            repository: "p".into(),
            repository_incarnation: String::new(),
            blob_key: "k".into(),
            multipart_id: "m".into(),
            next_byte: 0,
            flushed_bytes: 0,
            parts_flushed: 0,
            part_numbers_used: 0,
            last_part: None,
            smallest_nonfinal_part: None,
            state: crate::ports::UploadState::Open,
            version: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at: 10,
            hash: None,
            part_checksums: false,
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
