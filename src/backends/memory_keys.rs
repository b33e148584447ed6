//! [`KeyStore`] in memory, for tests and the in-process service.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::domain::error::StoreError;
use crate::ports::keys::{KeyFuture, KeyRecord, KeyStore};

/// Keys in a map; cheap to clone (clones share the map).
#[derive(Clone, Default)]
pub struct MemoryKeys {
    keys: Arc<Mutex<BTreeMap<String, KeyRecord>>>,
}

impl MemoryKeys {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, KeyRecord>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyStore for MemoryKeys {
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> KeyFuture<'a, ()> {
        Box::pin(async move {
            let mut map = self.map();
            if map.contains_key(&key.access_key_id) {
                return Err(StoreError::AlreadyExists);
            }
            map.insert(key.access_key_id.clone(), key.clone());
            Ok(())
        })
    }

    fn get_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, Option<KeyRecord>> {
        Box::pin(async move { Ok(self.map().get(access_key_id).cloned()) })
    }

    fn list_keys(&self) -> KeyFuture<'_, Vec<KeyRecord>> {
        Box::pin(async move { Ok(self.map().values().cloned().collect()) })
    }

    fn delete_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, bool> {
        Box::pin(async move { Ok(self.map().remove(access_key_id).is_some()) })
    }
}
