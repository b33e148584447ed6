//! The key store contract (tests/common/keys.rs) on DynamoDB, in the metadata table.

use ecr_layer_upload::backends::aws::DynamoKeys;

use crate::common::keys::key_store_contract;

#[tokio::test]
async fn dynamo_keys_keep_the_contract() {
    let (_, table) = crate::common::aws::names();
    let store = DynamoKeys::new(&crate::common::aws::sdk_config().await, table);
    key_store_contract(&store).await;
}
