//! The key store contract (tests/common/keys.rs) on the in-memory and embedded backends, and
//! what the embedded one promises besides: a file of mode 0600 that a second store on the same
//! directory (`keys create` while the server runs) reads and writes at once.

use ecr_layer_upload::backends::local::LocalKeys;
use ecr_layer_upload::backends::memory_keys::MemoryKeys;
use ecr_layer_upload::ports::keys::{KeyRecord, KeyStore, Permission};

use crate::common::keys::key_store_contract;

#[tokio::test]
async fn memory_keys_keep_the_contract() {
    key_store_contract(&MemoryKeys::new()).await;
}

#[tokio::test]
async fn local_keys_keep_the_contract() {
    let dir = crate::common::temp_dir();
    key_store_contract(&LocalKeys::open(dir.path())).await;
}

#[tokio::test]
async fn local_keys_are_private_and_shared_by_every_store_on_the_directory() {
    let dir = crate::common::temp_dir();
    let server = LocalKeys::open(dir.path());
    let cli = LocalKeys::open(dir.path());
    assert_eq!(server.list_keys().await.unwrap(), []);
    let key = KeyRecord {
        access_key_id: "AKLOCAL".into(),
        secret_access_key: "very-secret".into(),
        name: String::new(),
        permission: Permission::Pull,
        repositories: Vec::new(),
        created_at_ms: 1,
    };
    cli.create_key(&key).await.unwrap();
    assert_eq!(server.get_key("AKLOCAL").await.unwrap(), Some(key));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "keys.json must be readable by its owner only"
        );
    }
    assert!(cli.delete_key("AKLOCAL").await.unwrap());
    assert_eq!(server.get_key("AKLOCAL").await.unwrap(), None);
    // A file that is not a list of keys is a backend failure, not an empty set.
    std::fs::write(server.path(), b"garbage").unwrap();
    assert!(server.get_key("AKLOCAL").await.is_err());
}
