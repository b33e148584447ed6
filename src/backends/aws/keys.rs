//! [`KeyStore`] on the DynamoDB table of the metadata (docs/security.md): one item per key,
//! `pk` = `ACCESS_KEY`, `sk` = the access key id, the record as JSON in `doc`, `kind` =
//! `access_key`. No other item's partition starts with `ACCESS_KEY` (src/backends/aws/dynamo.rs
//! lists them), and listing the keys is one Query of that partition.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::sdk_failure;
use crate::domain::error::StoreError;
use crate::ports::StoreResult;
use crate::ports::keys::{KeyFuture, KeyRecord, KeyStore};

const PK_VALUE: &str = "ACCESS_KEY";
const DOC: &str = "doc";

type Item = HashMap<String, AttributeValue>;

/// The keys in the metadata table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoKeys {
    client: Client,
    table: String,
}

impl DynamoKeys {
    pub fn new(sdk_config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::from_client(Client::new(sdk_config), table)
    }

    pub fn from_client(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn key_of(id: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(PK_VALUE.to_owned())),
        ("sk".to_owned(), AttributeValue::S(id.to_owned())),
    ])
}

fn record(item: &Item) -> StoreResult<KeyRecord> {
    let doc = item
        .get(DOC)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::failure("access key item without doc"))?;
    serde_json::from_str(doc).map_err(|e| StoreError::backend("access key item unreadable", e))
}

impl DynamoKeys {
    async fn create(&self, key: &KeyRecord) -> StoreResult<()> {
        let doc =
            serde_json::to_string(key).map_err(|e| StoreError::backend("encode access key", e))?;
        let mut item = key_of(&key.access_key_id);
        item.insert(DOC.to_owned(), AttributeValue::S(doc));
        item.insert(
            "kind".to_owned(),
            AttributeValue::S("access_key".to_owned()),
        );
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(sdk_failure("create_key", e)),
        }
    }

    async fn get(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_failure("get_key", e))?;
        out.item.as_ref().map(record).transpose()
    }

    async fn list(&self) -> StoreResult<Vec<KeyRecord>> {
        let mut keys = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(PK_VALUE.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_failure("list_keys", e))?;
            for item in out.items() {
                keys.push(record(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(keys),
            }
        }
    }

    async fn delete(&self, id: &str) -> StoreResult<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_failure("delete_key", e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}

impl KeyStore for DynamoKeys {
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> KeyFuture<'a, ()> {
        Box::pin(self.create(key))
    }

    fn get_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, Option<KeyRecord>> {
        Box::pin(self.get(access_key_id))
    }

    fn list_keys(&self) -> KeyFuture<'_, Vec<KeyRecord>> {
        Box::pin(self.list())
    }

    fn delete_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, bool> {
        Box::pin(self.delete(access_key_id))
    }
}
