//! `ecr-layer-upload push` uploading several blobs at once (`--max-concurrent-uploads`): seen at
//! the server through a proxy that counts the uploads with a part in flight, a failing blob
//! failing the push while the others complete, an interrupted concurrent push resumed from the
//! state file all its blobs wrote, and a resumed upload that holds bytes of a file changed since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecr::types::{ImageIdentifier, LayerAvailability};

use super::push::{
    MIB, OCI_MANIFEST, assert_blobs, forward, manifest_by_tag, oci_image, push_with, read_state,
    server, write_single,
};
use crate::common::{create_repository as create, digest, noise, temp_dir, unique};

/// Four layers of three 1 MiB parts each (the last one short).
fn four_layers(seed: u64) -> Vec<Vec<u8>> {
    (0..4)
        .map(|i| noise(2 * MIB + 100_000 + i * 7, seed + i as u64))
        .collect()
}

/// What the proxy saw: the most uploads that had a part in flight at one time.
#[derive(Default)]
struct Seen {
    in_flight: HashMap<String, usize>,
    most: usize,
}

/// A proxy in front of the server that passes every request on and counts, for UploadLayerPart,
/// the distinct uploads with a part in flight. The first part is held until a part of another
/// upload arrives (at most 5 s, so that a push of one blob at a time goes on): a client that
/// uploads several blobs at once shows it whatever the timing.
async fn counting_proxy(target: String) -> (String, Arc<Mutex<Seen>>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (uploads_tx, uploads_rx) = tokio::sync::watch::channel(0usize);
    let uploads_tx = Arc::new(uploads_tx);
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answer = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (target, seen) = (target.clone(), seen.clone());
            let (uploads_tx, uploads_rx, held) =
                (uploads_tx.clone(), uploads_rx.clone(), held.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (target, seen) = (target.clone(), seen.clone());
                        let (uploads_tx, mut uploads_rx, held) =
                            (uploads_tx.clone(), uploads_rx.clone(), held.clone());
                        async move {
                            let is_part = req
                                .headers()
                                .get("x-amz-target")
                                .is_some_and(|t| t.as_bytes().ends_with(b".UploadLayerPart"));
                            let (head, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let upload = if is_part {
                                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                                let id = v["uploadId"].as_str().unwrap().to_string();
                                let mut s = seen.lock().unwrap();
                                *s.in_flight.entry(id.clone()).or_default() += 1;
                                s.most = s.most.max(s.in_flight.len());
                                uploads_tx.send_replace(s.in_flight.len());
                                Some(id)
                            } else {
                                None
                            };
                            if upload.is_some()
                                && !held.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    uploads_rx.wait_for(|n| *n >= 2),
                                )
                                .await;
                            }
                            let (rhead, rbody) = forward(&target, head.headers, body).await;
                            if let Some(id) = upload {
                                let mut s = seen.lock().unwrap();
                                let n = s.in_flight.get_mut(&id).unwrap();
                                *n -= 1;
                                if *n == 0 {
                                    s.in_flight.remove(&id);
                                }
                                uploads_tx.send_replace(s.in_flight.len());
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::from_parts(
                                rhead,
                                Full::new(rbody),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_uploads_several_blobs_at_once_and_one_at_a_time_when_asked() {
    let server = server();
    let ecr = server.ecr_client();
    let tmp = temp_dir();
    let image = oci_image(&four_layers(40), "concurrent");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));

    for (extra, name) in [
        (&[][..], "default"),
        (&["--max-concurrent-uploads", "1"][..], "one"),
    ] {
        let repo = unique(&format!("push/concurrent-{name}"));
        create(&ecr, &repo).await;
        let (proxy, seen) = counting_proxy(server.endpoint.clone()).await;
        let run = push_with(
            &server,
            &layout,
            &repo,
            extra,
            &tmp.path().join(format!("{name}.json")),
            &[("AWS_ENDPOINT_URL_ECR", &proxy)],
        );
        assert!(run.ok, "{}", run.stderr);
        assert!(run.stderr.contains("5 blobs uploaded"), "{}", run.stderr);
        let most = seen.lock().unwrap().most;
        if name == "default" {
            assert!(most >= 2, "at most {most} upload with a part in flight");
        } else {
            assert_eq!(most, 1, "--max-concurrent-uploads 1");
        }
        // Every blob is stored byte for byte under its digest, and the image refers to them.
        assert_blobs(&ecr, &repo, &image.blobs).await;
        let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
        assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_blob_fails_the_push_and_the_blobs_under_way_complete_intact() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/concurrent-fail");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = four_layers(50);
    let image = oci_image(&layers, "fail");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    // The third layer's file no longer matches its digest.
    let bad = digest(&layers[2]);
    let path = layout.join("blobs/sha256").join(&bad[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[MIB + 17] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    // All five blobs start at once (the default is 5).
    let run = push_with(
        &server,
        &layout,
        &repo,
        &[],
        &tmp.path().join("s.json"),
        &[],
    );
    assert!(!run.ok);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("corrupt layout") && last.contains(&bad),
        "{}",
        run.stderr
    );
    // The others completed with their sizes; the corrupt one was never completed; no image.
    for (d, data) in &image.blobs {
        let out = ecr
            .batch_check_layer_availability()
            .repository_name(&repo)
            .layer_digests(d)
            .send()
            .await
            .unwrap();
        let layer = &out.layers()[0];
        if *d == bad {
            assert_eq!(
                layer.layer_availability(),
                Some(&LayerAvailability::Unavailable)
            );
        } else {
            assert_eq!(
                layer.layer_availability(),
                Some(&LayerAvailability::Available),
                "{d}"
            );
            assert_eq!(layer.layer_size(), Some(data.len() as i64), "{d}");
        }
    }
    let out = ecr
        .batch_get_image()
        .repository_name(&repo)
        .image_ids(ImageIdentifier::builder().image_tag("v1").build())
        .send()
        .await
        .unwrap();
    assert!(out.images().is_empty(), "{:?}", out.images());

    // With the file repaired, a second push keeps the four stored blobs, uploads the fifth, and
    // every blob of the image downloads byte for byte.
    std::fs::write(&path, &layers[2]).unwrap();
    let run = push_with(
        &server,
        &layout,
        &repo,
        &[],
        &tmp.path().join("s.json"),
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("1 blobs uploaded") && run.stderr.contains("4 already present"),
        "{}",
        run.stderr
    );
    assert_blobs(&ecr, &repo, &image.blobs).await;
    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_concurrent_push_resumes_every_saved_upload() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/concurrent-resume");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = four_layers(60);
    let image = oci_image(&layers, "resume");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let state = tmp.path().join("s.json");

    // Stopped, as if killed, once three parts were accepted; the blobs under way stop at their
    // next accepted part. No layer (three parts each) can have been completed.
    let stopped = push_with(
        &server,
        &layout,
        &repo,
        &[],
        &state,
        &[("ECR_PUSH_STOP_AFTER_PARTS", "3")],
    );
    assert!(!stopped.ok);
    let saved = read_state(&state);
    let uploads = saved["uploads"].as_object().unwrap();
    let mut started_layers = 0;
    for (key, entry) in uploads {
        let d = key.rsplit('|').next().unwrap();
        assert!(image.blobs.iter().any(|(b, _)| b == d), "{key}");
        if layers.iter().any(|l| digest(l) == d) && entry["nextByte"].as_u64().unwrap() > 0 {
            started_layers += 1;
        }
    }
    // At least two of the three parts were layer parts (the config is one part).
    assert!(started_layers >= 1, "{uploads:?}");

    let resumed = push_with(&server, &layout, &repo, &[], &state, &[]);
    assert!(resumed.ok, "{}", resumed.stderr);
    // Every upload the concurrent blobs saved is continued where it was saved.
    for (key, entry) in uploads {
        let d = key.rsplit('|').next().unwrap();
        let want = format!(
            "resuming {d} at byte {} of upload {}",
            entry["nextByte"].as_u64().unwrap(),
            entry["uploadId"].as_str().unwrap()
        );
        assert!(resumed.stderr.contains(&want), "{want}\n{}", resumed.stderr);
    }
    assert_blobs(&ecr, &repo, &image.blobs).await;
    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    assert!(
        read_state(&state)["uploads"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_holding_bytes_of_a_since_repaired_file_starts_over() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/other-bytes");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layer = noise(3 * MIB + 123_457, 70);
    let image = oci_image(std::slice::from_ref(&layer), "other-bytes");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let d = digest(&layer);
    let path = layout.join("blobs/sha256").join(&d[7..]);
    let mut changed = layer.clone();
    changed[MIB + 3] ^= 0xff;
    std::fs::write(&path, &changed).unwrap();
    let state = tmp.path().join("s.json");

    // The changed file's four parts are all accepted (after the config's one part), and the run
    // stops before it would have checked the digest.
    let stopped = push_with(
        &server,
        &layout,
        &repo,
        &["--max-concurrent-uploads", "1"],
        &state,
        &[("ECR_PUSH_STOP_AFTER_PARTS", "5")],
    );
    assert!(!stopped.ok);
    let saved = read_state(&state);
    let entry = saved["uploads"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(entry["nextByte"].as_u64(), Some(layer.len() as u64));

    // Repaired, the file matches its digest but the saved upload holds the other bytes: the
    // server refuses to complete it and the blob is uploaded again.
    std::fs::write(&path, &layer).unwrap();
    let run = push_with(&server, &layout, &repo, &[], &state, &[]);
    assert!(run.ok, "{}", run.stderr);
    let want = format!(
        "upload {} of {d} holds other bytes than the file; starting over",
        entry["uploadId"].as_str().unwrap()
    );
    assert!(run.stderr.contains(&want), "{}", run.stderr);
    assert_blobs(&ecr, &repo, &image.blobs).await;
}
