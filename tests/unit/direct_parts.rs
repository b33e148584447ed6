//! The direct-part behaviours (`tests/service/direct.rs`) on the in-memory and embedded backends.

mod memory {
    use crate::{service_direct, service_suite};
    service_direct::direct_behaviours!(service_suite::service_tests!(
        service_direct,
        crate::service::Memory
    ));
}

mod embedded {
    use crate::{service_direct, service_suite};
    service_direct::direct_behaviours!(service_suite::service_tests!(
        service_direct,
        crate::service::Embedded
    ));
}
