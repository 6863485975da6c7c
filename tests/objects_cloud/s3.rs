//! S3 through `object_store`'s AWS client, against moto's S3.

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};

use super::{http, server, suites};

#[tokio::test]
async fn s3_on_moto_passes_both_suites() {
    let Some(url) = server("CMEK_TEST_MOTO_URL") else {
        return;
    };
    for bucket in ["cmek-objects-fixed", "cmek-objects"] {
        let status = http("PUT", &format!("{url}/{bucket}"), &[]);
        assert!(
            status == 200 || status == 409,
            "create bucket {bucket}: {status}"
        );
    }
    let s3 = |bucket: &str| {
        AmazonS3Builder::new()
            .with_endpoint(&url)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .unwrap()
    };
    // moto's conditional PUT is not atomic under racing writers (object_store's own S3 tests
    // use LocalStack): the racing part is left out here; conditional updates are still
    // checked one at a time by cmek's suite.
    suites::object_store_suite(
        &suites::encrypted_fixed(s3("cmek-objects-fixed")),
        true,
        true,
        false,
    )
    .await;
    cmek::testkit::objects::run_all(&suites::encrypted(s3("cmek-objects"))).await;
}
