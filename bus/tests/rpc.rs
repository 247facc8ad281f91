//! Typed request/reply against a real nats-server: every error kind, and credentials in the URL.

use std::time::Duration;

use futures::StreamExt;
use rbee_bus::{connect, subject, Bus, BusError, ErrorCode, NatsConfig, SpawnReply, SpawnRequest, WireError};
use rbee_testkit::NatsServer;

fn spawn_request() -> SpawnRequest {
    SpawnRequest {
        v: 1,
        model_id: "m1".parse().expect("id"),
        device: None,
        slots: None,
        ctx_per_slot: None,
        worker_type: None,
        worker_id: None,
        threads: None,
        fence: None,
    }
}

async fn responder(bus: Bus, subject: String, answer: fn(SpawnRequest) -> Result<SpawnReply, WireError>) {
    let mut sub = bus.client().subscribe(subject).await.expect("subscribe");
    bus.round_trip().await.expect("round trip");
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let result = match rbee_bus::rpc::decode::<SpawnRequest>(&msg.subject, &msg.payload) {
                Ok(req) => answer(req),
                Err(e) => Err(WireError::new(ErrorCode::BadRequest, e.to_string())),
            };
            bus.reply(&msg, result).await.expect("reply");
        }
    });
}

#[tokio::test]
async fn request_returns_typed_reply_or_typed_error() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive: rbee_bus::HiveId = "h1".parse().expect("id");
    responder(bus.clone(), subject::hive_spawn(&hive), |req| {
        if req.model_id.as_str() == "m1" {
            Ok(SpawnReply { v: 1, worker_id: "w1".parse().expect("id"), pid: 7, device: "cpu".into() })
        } else {
            Err(WireError::new(ErrorCode::UnknownModel, "no model m2"))
        }
    })
    .await;

    let reply: SpawnReply = bus
        .request(subject::hive_spawn(&hive), &spawn_request(), Duration::from_secs(2))
        .await
        .expect("reply");
    assert_eq!(reply.pid, 7);

    let mut req = spawn_request();
    req.model_id = "m2".parse().expect("id");
    let err = bus.request::<_, SpawnReply>(subject::hive_spawn(&hive), &req, Duration::from_secs(2)).await;
    assert!(
        matches!(err, Err(BusError::Remote { ref error, .. }) if error.code() == ErrorCode::UnknownModel),
        "{err:?}"
    );

    // A malformed request gets a bad_request reply, and the responder keeps serving.
    let raw = bus.client().request(subject::hive_spawn(&hive), "not json".into()).await.expect("raw reply");
    let err = rbee_bus::rpc::decode_reply::<SpawnReply>("x", &raw.payload).expect_err("error reply");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::BadRequest));
    let again: SpawnReply = bus
        .request(subject::hive_spawn(&hive), &spawn_request(), Duration::from_secs(2))
        .await
        .expect("reply");
    assert_eq!(again.pid, 7);

    // A reply that is not the expected type is a decode error.
    let err = bus
        .request::<_, rbee_bus::StopReply>(
            subject::hive_spawn(&hive),
            &spawn_request(),
            Duration::from_secs(2),
        )
        .await;
    assert!(matches!(err, Err(BusError::Decode { .. })), "{err:?}");
}

#[tokio::test]
async fn no_responders_and_timeout_are_told_apart() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive: rbee_bus::HiveId = "nobody".parse().expect("id");
    let err = bus
        .request::<_, SpawnReply>(subject::hive_spawn(&hive), &spawn_request(), Duration::from_secs(1))
        .await;
    assert!(matches!(err, Err(BusError::NoResponders { .. })), "{err:?}");

    // A subscriber that never answers: timeout.
    let _silent = bus.client().subscribe(subject::hive_spawn(&hive)).await.expect("subscribe");
    bus.round_trip().await.expect("round trip");
    let err = bus
        .request::<_, SpawnReply>(subject::hive_spawn(&hive), &spawn_request(), Duration::from_millis(300))
        .await;
    assert!(matches!(err, Err(BusError::Timeout { .. })), "{err:?}");
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let big = "x".repeat(rbee_bus::rpc::MAX_MESSAGE_BYTES + 1);
    let err = bus.publish("rbee.test".into(), &big).await;
    assert!(matches!(err, Err(BusError::TooLarge { .. })), "{err:?}");
}

#[tokio::test]
async fn credentials_in_the_url_are_used() {
    let server = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret"]);
    let with_creds = format!("nats://alice:s3cret@127.0.0.1:{}", server.port());
    let bus = connect(&NatsConfig::url(with_creds)).await.expect("url credentials are honoured");
    bus.round_trip().await.expect("round trip");
    assert!(connect(&NatsConfig::url(server.url())).await.is_err(), "connected without credentials");
    let wrong = format!("nats://alice:nope@127.0.0.1:{}", server.port());
    let err = connect(&NatsConfig::url(wrong)).await.expect_err("wrong password refused");
    assert!(!err.to_string().contains("nope"), "the password leaked into the error: {err}");

    let token_server = NatsServer::start_with(&["--auth", "tok123"]);
    let bus = connect(&NatsConfig::url(format!("nats://tok123@127.0.0.1:{}", token_server.port())))
        .await
        .expect("url token honoured");
    bus.round_trip().await.expect("round trip");
}

#[tokio::test]
async fn a_denied_request_says_permission_denied() {
    let dir = tempfile::tempdir().expect("tmp");
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        r#"authorization { users = [
            { user: "limited", password: "pw", permissions: { publish: { deny: ["rbee.hive.*.spawn"] }, subscribe: { allow: [">"] } } }
            { user: "hive", password: "pw" }
        ] }"#,
    )
    .expect("write conf");
    let server = NatsServer::start_with_config(&conf);
    let url = |u: &str| format!("nats://{u}:pw@127.0.0.1:{}", server.port());
    let hive_bus = connect(&NatsConfig::url(url("hive"))).await.expect("hive connects");
    let hive: rbee_bus::HiveId = "h1".parse().expect("id");
    responder(hive_bus, subject::hive_spawn(&hive), |_| {
        Err(WireError::new(ErrorCode::Internal, "should not be reached"))
    })
    .await;
    let limited = connect(&NatsConfig::url(url("limited"))).await.expect("limited connects");
    let err = limited
        .request::<_, SpawnReply>(subject::hive_spawn(&hive), &spawn_request(), Duration::from_millis(500))
        .await;
    assert!(matches!(err, Err(BusError::PermissionDenied { .. })), "{err:?}");
    assert!(limited.denials().count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_an_internal_error_reply_and_the_loop_goes_on() {
    use async_nats::service::ServiceExt;
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let service = bus.client().service_builder().start("rbee-test", "0.0.1").await.expect("service");
    let mut endpoint = service.endpoint("rbee.test.panics").await.expect("endpoint");
    bus.round_trip().await.expect("round trip");
    let serving = tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let payload = request.message.payload.clone();
            let _ = rbee_bus::rpc::respond_guarded(&request, "test request", async move {
                let text = std::str::from_utf8(&payload).unwrap_or_default().to_owned();
                if text.contains("boom") {
                    panic!("handler blew up on\n{text}");
                }
                Ok::<_, WireError>(SpawnReply {
                    v: 1,
                    worker_id: "w1".parse().expect("id"),
                    pid: 1,
                    device: text,
                })
            })
            .await;
        }
    });
    for round in 0..2 {
        let started = std::time::Instant::now();
        let raw =
            bus.client().request("rbee.test.panics", "boom".into()).await.expect("a reply, not a timeout");
        assert!(started.elapsed() < Duration::from_secs(2), "round {round}");
        let err = rbee_bus::rpc::decode_reply::<SpawnReply>("x", &raw.payload).expect_err("an error reply");
        let wire = err.remote().expect("wire error");
        assert_eq!(wire.code(), ErrorCode::Internal);
        assert!(
            wire.error.message.contains("test request failed inside the handler: handler blew up"),
            "{wire:?}"
        );
        let ok = bus.client().request("rbee.test.panics", "fine".into()).await.expect("reply");
        let reply = rbee_bus::rpc::decode_reply::<SpawnReply>("x", &ok.payload).expect("served");
        assert_eq!(reply.device, "fine");
    }
    assert!(!serving.is_finished(), "the serving loop ended");
}
