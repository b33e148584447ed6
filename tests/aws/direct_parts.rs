//! The direct-part behaviours (`tests/service/direct.rs`) on S3 + DynamoDB.

use crate::{service_direct, service_suite};
service_direct::direct_behaviours!(service_suite::service_tests!(
    service_direct,
    crate::backend::Aws
));
