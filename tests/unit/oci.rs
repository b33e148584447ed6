//! The OCI Distribution API through its handler on the in-memory and embedded backends: the
//! scenarios of tests/oci/suite.rs.

use ecr_layer_upload::service::Settings;

use crate::oci_suite;

mod memory {
    use super::*;
    use crate::common::service::memory_service;

    async fn make(settings: Settings) -> crate::common::service::MemoryService {
        memory_service(settings)
    }

    crate::oci_scenarios!(make);
}

mod embedded {
    use super::*;
    use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
    use ecr_layer_upload::service::Service;

    /// The service on a fresh data directory, which lives as long as the process (a temporary
    /// directory under the system's, removed by the OS).
    async fn make(settings: Settings) -> Service<LocalMetadata, LocalBlobs> {
        let dir = crate::common::temp_dir().keep();
        Service::new(
            LocalMetadata::open(&dir).unwrap(),
            LocalBlobs::open(&dir)
                .unwrap()
                .with_min_part_size(5 * 1024 * 1024),
            settings,
        )
    }

    crate::oci_scenarios!(make);
}
