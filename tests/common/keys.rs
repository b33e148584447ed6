//! The key store contract, run on every backend's `KeyStore` (tests/unit/keys_store.rs,
//! tests/aws/keys.rs).

use ecr_layer_upload::domain::error::StoreError;
use ecr_layer_upload::ports::keys::{KeyRecord, KeyStore, Permission};

pub async fn key_store_contract(store: &dyn KeyStore) {
    let id = format!("AKCONTRACT{}", &super::unique("k")[2..]).to_uppercase();
    let key = KeyRecord {
        access_key_id: id.clone(),
        secret_access_key: "s3cr3t".into(),
        name: "contract".into(),
        permission: Permission::Push,
        repositories: vec!["team/*".into(), "exact".into()],
        created_at_ms: 42,
    };
    assert_eq!(store.get_key(&id).await.unwrap(), None);
    store.create_key(&key).await.unwrap();
    assert_eq!(store.get_key(&id).await.unwrap(), Some(key.clone()));
    let mut again = key.clone();
    again.secret_access_key = "other".into();
    assert!(matches!(
        store.create_key(&again).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        store.get_key(&id).await.unwrap().unwrap().secret_access_key,
        "s3cr3t"
    );
    let listed = store.list_keys().await.unwrap();
    assert!(listed.contains(&key));
    let ids: Vec<&str> = listed.iter().map(|k| k.access_key_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "keys are listed by id");
    assert!(store.delete_key(&id).await.unwrap());
    assert!(!store.delete_key(&id).await.unwrap());
    assert_eq!(store.get_key(&id).await.unwrap(), None);
    assert!(!store.list_keys().await.unwrap().contains(&key));
    // The record's Debug leaves the secret out.
    assert!(!format!("{key:?}").contains("s3cr3t"));
}
