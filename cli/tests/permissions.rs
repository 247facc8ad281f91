//! Secure mode against a real nats-server running the configuration `rbee_cli::secure::server_config`
//! renders from `rbee_bus::security`'s identities:
//! every denial the design promises is made by the server, surfaced by our connection (recorded in
//! `Bus::denials()` and logged as `nats permission denied`), and the forged message reaches no one;
//! the legitimate flows (spawn request/reply, heartbeats, assignments, the service API, JetStream job
//! history) still work, with no denial at all; unauthenticated clients cannot connect; and the server
//! agrees, subject by subject, with the permissions the generator says it wrote.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::security::{Identity, Permissions, Role, SecurityConfig};
use rbee_bus::{connect, subject, Bus, BusError, HiveId, NatsConfig, SpawnReply, SpawnRequest, WorkerId};
use rbee_cli::secure::server_config::{self, ServerOptions};
use rbee_testkit::NatsServer;

// ----- log capture: the denial must be in our logs, not only in a counter -----------------------------

fn logs() -> &'static rbee_testkit::logs::CapturedLogs {
    rbee_testkit::logs::capture("rbee_bus=info")
}

fn logged(needle: &str) -> bool {
    logs().text().lines().any(|l| l.contains("nats permission denied") && l.contains(needle))
}

// ----- a secure cluster ------------------------------------------------------------------------------

struct Secure {
    server: NatsServer,
    config: SecurityConfig,
    hive: HiveId,
    pool: Vec<WorkerId>,
    _dir: tempfile::TempDir,
}

impl Secure {
    fn start() -> Self {
        logs();
        let dir = tempfile::tempdir().expect("tmp");
        let mut config = SecurityConfig::new();
        let hive: HiveId = "h1".parse().expect("id");
        config.add(Role::Queen).expect("queen");
        config.add(Role::Hive { hive_id: hive.clone() }).expect("hive");
        config.add(Role::Hive { hive_id: "h2".parse().expect("id") }).expect("hive 2");
        let pool = config.add_worker_pool(&hive, 2).expect("pool");
        config.add(Role::Observer).expect("observer");
        config.add(Role::Cli).expect("cli");
        let path = dir.path().join("nats-secure.conf");
        server_config::write(&config, &path, &ServerOptions::default()).expect("write config");
        server_config::check(&rbee_testkit::paths::nats_server_bin(), &path)
            .expect("nats-server -t accepts it");
        let server = NatsServer::start_with_config(&path);
        Self { server, config, hive, pool, _dir: dir }
    }

    fn identity(&self, role: &Role) -> &Identity {
        self.config.by_role(role).unwrap_or_else(|| panic!("no identity for {role:?}"))
    }

    fn worker_role(&self, n: usize) -> Role {
        Role::Worker { worker_id: self.pool[n].clone(), hive_id: self.hive.clone() }
    }

    async fn connect(&self, role: &Role) -> Bus {
        let identity = self.identity(role);
        connect(&identity.nats_config(&[self.server.url()]))
            .await
            .unwrap_or_else(|e| panic!("{} cannot connect: {e}", identity.user()))
    }

    fn permissions(&self, role: &Role) -> Permissions {
        self.config.permissions(self.identity(role))
    }
}

/// Waits until the server has denied `subject` to `bus` (the denial arrives as an async event).
async fn wait_denied(bus: &Bus, subject: &str, since: Instant) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if bus.denials().denied_since(subject, since) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Nothing more arrives on `sub` within `window`.
async fn silent(sub: &mut async_nats::Subscriber, window: Duration) -> Option<async_nats::Message> {
    tokio::time::timeout(window, sub.next()).await.ok().flatten()
}

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

// ----- the tests --------------------------------------------------------------------------------------

#[test]
fn generated_config_passes_nats_server_t_and_a_broken_one_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = SecurityConfig::new();
    config.add(Role::Queen).expect("queen");
    config.add(Role::Hive { hive_id: "h1".parse().expect("id") }).expect("hive");
    let options = ServerOptions {
        listen: Some("127.0.0.1:4222".into()),
        jetstream_store: Some(dir.path().join("js")),
        ..ServerOptions::default()
    };
    let path = dir.path().join("ok.conf");
    server_config::write(&config, &path, &options).expect("write");
    let bin = rbee_testkit::paths::nats_server_bin();
    server_config::check(&bin, &path).expect("valid config");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the config holds passwords: it must be private");
    }

    // A broken file is refused, and the refusal does not echo the password.
    let secret = config.identities()[0].password().to_owned();
    let broken = dir.path().join("broken.conf");
    std::fs::write(&broken, format!("authorization {{ users = [ {{ user: \"q\"\n password: \"{secret}\"\n permissions: {{ publish: [ }} ]"))
        .expect("write");
    let err = server_config::check(&bin, &broken).expect_err("refused");
    assert!(!err.to_string().contains(&secret), "password leaked in: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_or_wrong_password_clients_cannot_connect() {
    let s = Secure::start();
    let anonymous = connect(&NatsConfig::url(s.server.url())).await;
    assert!(anonymous.is_err(), "an unauthenticated client connected");
    let mut wrong = s.identity(&Role::Queen).nats_config(&[s.server.url()]);
    wrong.password = Some("not-the-password".into());
    assert!(connect(&wrong).await.is_err(), "a wrong password connected");
    let mut stranger = wrong.clone();
    stranger.user = Some("mallory".into());
    assert!(connect(&stranger).await.is_err(), "an unknown user connected");
    // The right password does.
    s.connect(&Role::Queen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_forge_another_workers_heartbeat() {
    let s = Secure::start();
    let queen = s.connect(&Role::Queen).await;
    let mut beats = queen.client().subscribe(subject::WORKER_HEARTBEAT_ALL).await.expect("sub");
    queen.round_trip().await.expect("rt");
    let w0 = s.connect(&s.worker_role(0)).await;

    let since = Instant::now();
    let forged = subject::worker_heartbeat(&s.pool[1]);
    w0.publish(forged.clone(), &serde_json::json!({"forged": true})).await.expect("publish returns ok");
    let own = subject::worker_heartbeat(&s.pool[0]);
    w0.publish(own.clone(), &serde_json::json!({"own": true})).await.expect("publish");

    assert!(wait_denied(&w0, &forged, since).await, "the server did not deny {forged}");
    assert!(logged(&forged), "the denial of {forged} is not in our logs");
    // Same connection, so order is kept: had the forged one been delivered, it would come first.
    let first =
        tokio::time::timeout(Duration::from_secs(5), beats.next()).await.expect("own beat").expect("open");
    assert_eq!(first.subject.as_str(), own, "the queen received a forged heartbeat");
    assert!(silent(&mut beats, Duration::from_millis(300)).await.is_none(), "something else arrived");
    assert_eq!(w0.denials().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_queen_spawns_and_assigns() {
    let s = Secure::start();
    // The hive serves its spawn subject; worker w1 serves its assignment subject.
    let hive = s.connect(&Role::Hive { hive_id: s.hive.clone() }).await;
    let mut spawns = hive.client().subscribe(subject::hive_spawn(&s.hive)).await.expect("sub");
    hive.round_trip().await.expect("rt");
    let w1 = s.connect(&s.worker_role(1)).await;
    let mut jobs = w1.client().subscribe(subject::worker_jobs(&s.pool[1])).await.expect("sub");
    w1.round_trip().await.expect("rt");

    // A worker asking for a spawn gets a permission error, not a timeout.
    let w0 = s.connect(&s.worker_role(0)).await;
    let err = w0
        .request::<_, SpawnReply>(subject::hive_spawn(&s.hive), &spawn_request(), Duration::from_secs(2))
        .await;
    assert!(matches!(err, Err(BusError::PermissionDenied { .. })), "worker spawn: {err:?}");
    assert!(logged(&subject::hive_spawn(&s.hive)));

    // A worker assigning a job to another worker, a hive spawning on itself or assigning: denied.
    let since = Instant::now();
    w0.publish(subject::worker_jobs(&s.pool[1]), &serde_json::json!({"forged": 1})).await.expect("pub");
    hive.publish(subject::hive_spawn(&s.hive), &spawn_request()).await.expect("pub");
    hive.publish(subject::worker_jobs(&s.pool[1]), &serde_json::json!({"forged": 2})).await.expect("pub");
    assert!(wait_denied(&w0, &subject::worker_jobs(&s.pool[1]), since).await);
    assert!(wait_denied(&hive, &subject::hive_spawn(&s.hive), since).await);
    assert!(wait_denied(&hive, &subject::worker_jobs(&s.pool[1]), since).await);
    assert!(silent(&mut spawns, Duration::from_millis(300)).await.is_none(), "a forged spawn arrived");
    assert!(silent(&mut jobs, Duration::from_millis(100)).await.is_none(), "a forged assignment arrived");

    // The queen may.
    let queen = s.connect(&Role::Queen).await;
    queen.publish(subject::worker_jobs(&s.pool[1]), &serde_json::json!({"real": 1})).await.expect("pub");
    let got =
        tokio::time::timeout(Duration::from_secs(5), jobs.next()).await.expect("assignment").expect("open");
    assert_eq!(got.subject.as_str(), subject::worker_jobs(&s.pool[1]));
    assert_eq!(queen.denials().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_reads_tokens_and_heartbeats_but_publishes_nothing() {
    let s = Secure::start();
    let queen = s.connect(&Role::Queen).await;
    let mut queen_jobs = queen.client().subscribe(security_job_all()).await.expect("sub");
    queen.round_trip().await.expect("rt");
    let observer = s.connect(&Role::Observer).await;
    let job: rbee_bus::JobId = "job-1".parse().expect("id");
    let mut tokens = observer.client().subscribe(subject::JOB_TOKENS_ALL).await.expect("sub");
    let mut beats = observer.client().subscribe(subject::WORKER_HEARTBEAT_ALL).await.expect("sub");
    // The observer cannot round-trip (that publishes): publish until its subscriptions see something.
    let w0 = s.connect(&s.worker_role(0)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut got_token, mut got_beat) = (false, false);
    while !(got_token && got_beat) {
        assert!(Instant::now() < deadline, "the observer receives nothing");
        w0.publish(subject::job_tokens(&job), &serde_json::json!({"t": "hi"})).await.expect("pub");
        w0.publish(subject::worker_heartbeat(&s.pool[0]), &serde_json::json!({"hb": 1})).await.expect("pub");
        got_token |= silent(&mut tokens, Duration::from_millis(100)).await.is_some();
        got_beat |= silent(&mut beats, Duration::from_millis(100)).await.is_some();
    }
    assert_eq!(w0.denials().count(), 0);
    // Drain what the queen got from the worker.
    while silent(&mut queen_jobs, Duration::from_millis(200)).await.is_some() {}

    let since = Instant::now();
    for subject in [
        subject::job_tokens(&job),
        subject::job_status(&job),
        subject::job_cancel(&job),
        subject::hive_spawn(&s.hive),
        subject::worker_heartbeat(&s.pool[0]),
    ] {
        observer.publish(subject.clone(), &serde_json::json!({"forged": true})).await.expect("pub");
        assert!(wait_denied(&observer, &subject, since).await, "observer publish on {subject} not denied");
        assert!(logged(&subject));
    }
    // Nor may it read assignments (they carry prompts) or everything.
    let mut assignments = observer.client().subscribe(subject::WORKER_JOBS_ALL).await.expect("sub call");
    let _everything = observer.client().subscribe(subject::ALL).await.expect("sub call");
    assert!(wait_denied(&observer, subject::WORKER_JOBS_ALL, since).await);
    assert!(wait_denied(&observer, subject::ALL, since).await);
    queen
        .publish(subject::worker_jobs(&s.pool[0]), &serde_json::json!({"prompt": "secret"}))
        .await
        .expect("pub");
    assert!(
        silent(&mut assignments, Duration::from_millis(300)).await.is_none(),
        "observer read an assignment"
    );
    assert!(
        silent(&mut queen_jobs, Duration::from_millis(100)).await.is_none(),
        "a forged job event arrived"
    );
}

fn security_job_all() -> &'static str {
    rbee_bus::security::JOB_ALL
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identity_reads_or_forges_another_identitys_replies() {
    let s = Secure::start();
    let queen = s.connect(&Role::Queen).await;
    let hive = s.connect(&Role::Hive { hive_id: s.hive.clone() }).await;
    let mut spawns = hive.client().subscribe(subject::hive_spawn(&s.hive)).await.expect("sub");
    hive.round_trip().await.expect("rt");
    let responder = hive.clone();
    tokio::spawn(async move {
        while let Some(msg) = spawns.next().await {
            let reply =
                SpawnReply { v: 1, worker_id: "h1-w0".parse().expect("id"), pid: 1, device: "cpu".into() };
            let _ = responder.reply(&msg, Ok(reply)).await;
        }
    });

    let spy = s.connect(&s.worker_role(0)).await;
    let since = Instant::now();
    let queen_inbox = format!("{}.>", s.identity(&Role::Queen).inbox_prefix());
    let mut theirs = spy.client().subscribe(queen_inbox.clone()).await.expect("sub call");
    let mut default_inbox = spy.client().subscribe("_INBOX.>").await.expect("sub call");
    assert!(wait_denied(&spy, &queen_inbox, since).await, "subscribing to the queen's inbox was allowed");
    assert!(wait_denied(&spy, "_INBOX.>", since).await, "subscribing to _INBOX.> was allowed");
    assert!(logged(&queen_inbox));

    // The queen's request is answered through its own inbox; the spy sees nothing.
    let reply: SpawnReply = queen
        .request(subject::hive_spawn(&s.hive), &spawn_request(), Duration::from_secs(5))
        .await
        .expect("the queen's spawn request is answered");
    assert_eq!(reply.pid, 1);
    assert!(
        silent(&mut theirs, Duration::from_millis(300)).await.is_none(),
        "the spy read the queen's reply"
    );
    assert!(silent(&mut default_inbox, Duration::from_millis(50)).await.is_none());

    // Nor can it push a fake reply into the queen's inbox.
    let fake = format!("{}.x.y", s.identity(&Role::Queen).inbox_prefix());
    spy.publish(fake.clone(), &serde_json::json!({"fake": true})).await.expect("pub");
    assert!(wait_denied(&spy, &fake, since).await, "publishing into the queen's inbox was allowed");
    assert_eq!(queen.denials().count(), 0);
    assert_eq!(hive.denials().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legitimate_flows_work_with_no_denial() {
    use async_nats::service::ServiceExt;
    let s = Secure::start();
    let queen = s.connect(&Role::Queen).await;
    let hive = s.connect(&Role::Hive { hive_id: s.hive.clone() }).await;
    let w0 = s.connect(&s.worker_role(0)).await;
    let cli = s.connect(&Role::Cli).await;

    // The hive serves spawn through the NATS service API, as rbee-hive does.
    let service = hive.client().service_builder().start("rbee-hive", "0.1.0").await.expect("hive service");
    let mut spawn =
        service.endpoint_builder().name("spawn").add(subject::hive_spawn(&s.hive)).await.expect("ep");
    let mut models =
        service.endpoint_builder().name("models").add(subject::hive_models(&s.hive)).await.expect("ep");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(req) = spawn.next() => {
                    let reply = SpawnReply { v: 1, worker_id: "h1-w0".parse().expect("id"), pid: 42, device: "cpu".into() };
                    rbee_bus::rpc::respond(&req, &Ok(reply)).await;
                }
                Some(req) = models.next() => {
                    rbee_bus::rpc::respond(&req, &Ok(rbee_bus::ModelList { v: 1, models: vec![] })).await;
                }
                else => break,
            }
        }
    });
    // The worker serves its assignments through the service API too.
    let wservice = w0.client().service_builder().start("rbee-worker", "0.1.0").await.expect("worker service");
    let mut jobs =
        wservice.endpoint_builder().name("jobs").add(subject::worker_jobs(&s.pool[0])).await.expect("ep");
    tokio::spawn(async move {
        while let Some(req) = jobs.next().await {
            rbee_bus::rpc::respond(&req, &Ok(serde_json::json!({"accepted": true}))).await;
        }
    });
    hive.round_trip().await.expect("hive rt");
    w0.round_trip().await.expect("worker rt");

    // queen -> hive spawn.
    let reply: SpawnReply = queen
        .request(subject::hive_spawn(&s.hive), &spawn_request(), Duration::from_secs(5))
        .await
        .expect("spawn answered");
    assert_eq!(reply.pid, 42);
    // queen -> worker assignment.
    let accepted: serde_json::Value = queen
        .request(subject::worker_jobs(&s.pool[0]), &serde_json::json!({"job": 1}), Duration::from_secs(5))
        .await
        .expect("assignment answered");
    assert_eq!(accepted["accepted"], true);
    // cli -> hive listing, and the service API (`nats micro ls`).
    let list: rbee_bus::ModelList = cli
        .request(subject::hive_models(&s.hive), &rbee_bus::ListRequest { v: 1 }, Duration::from_secs(5))
        .await
        .expect("listing answered");
    assert!(list.models.is_empty());
    let ping =
        tokio::time::timeout(Duration::from_secs(5), cli.client().request("$SRV.PING.rbee-hive", "".into()))
            .await
            .expect("ping in time")
            .expect("ping answered");
    assert!(String::from_utf8_lossy(&ping.payload).contains("rbee-hive"));

    // worker heartbeat -> queen, hive heartbeat -> queen.
    let mut beats = queen.client().subscribe(subject::WORKER_HEARTBEAT_ALL).await.expect("sub");
    let mut hive_beats = queen.client().subscribe(subject::HIVE_HEARTBEAT_ALL).await.expect("sub");
    queen.round_trip().await.expect("rt");
    w0.publish(subject::worker_heartbeat(&s.pool[0]), &serde_json::json!({"hb": 1})).await.expect("pub");
    hive.publish(subject::hive_heartbeat(&s.hive), &serde_json::json!({"hb": 1})).await.expect("pub");
    hive.publish(subject::worker_lifecycle(&s.pool[0]), &serde_json::json!({"lc": 1})).await.expect("pub");
    let beat = tokio::time::timeout(Duration::from_secs(5), beats.next()).await.expect("beat").expect("open");
    assert_eq!(beat.subject.as_str(), subject::worker_heartbeat(&s.pool[0]));
    tokio::time::timeout(Duration::from_secs(5), hive_beats.next()).await.expect("hive beat").expect("open");

    // The queen's job history: stream RBEE_JOBS, a status from the worker, replayed by an ordered
    // consumer (what the queen does at start).
    use async_nats::jetstream::{self, consumer, stream};
    let js = jetstream::new(queen.client().clone());
    let mut history = js
        .create_stream(stream::Config {
            name: rbee_bus::subject::JOBS_STREAM.into(),
            subjects: vec![subject::JOB_STATUS_ALL.into()],
            ..Default::default()
        })
        .await
        .expect("the queen creates its stream");
    js.update_stream(stream::Config {
        name: rbee_bus::subject::JOBS_STREAM.into(),
        subjects: vec![subject::JOB_STATUS_ALL.into()],
        max_messages: 1000,
        ..Default::default()
    })
    .await
    .expect("the queen updates its stream");
    let job: rbee_bus::JobId = "job-1".parse().expect("id");
    w0.publish(subject::job_status(&job), &serde_json::json!({"state": "running"})).await.expect("pub");
    w0.round_trip().await.expect("rt");
    let deadline = Instant::now() + Duration::from_secs(5);
    while history.info().await.expect("info").state.messages < 1 {
        assert!(Instant::now() < deadline, "the status never reached the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ordered = js
        .get_stream(rbee_bus::subject::JOBS_STREAM)
        .await
        .expect("get stream")
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("the queen creates its replay consumer");
    let mut messages = ordered.messages().await.expect("messages");
    let first = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("replayed in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(first.subject.as_str(), subject::job_status(&job));

    // A worker may not touch JetStream.
    let since = Instant::now();
    let wjs = jetstream::new(w0.client().clone());
    let denied =
        tokio::time::timeout(Duration::from_secs(3), wjs.get_stream(rbee_bus::subject::JOBS_STREAM)).await;
    assert!(!matches!(denied, Ok(Ok(_))), "a worker read the job stream");
    let js_info = format!("$JS.API.STREAM.INFO.{}", rbee_bus::subject::JOBS_STREAM);
    assert!(wait_denied(&w0, &js_info, since).await);

    for (name, bus) in [("queen", &queen), ("hive", &hive), ("cli", &cli)] {
        assert_eq!(bus.denials().count(), 0, "{name} was denied something in a legitimate flow");
    }
    assert_eq!(w0.denials().count(), 1, "the worker was denied more than the JetStream probe");
}

/// The server and the generator agree on every rbee subject, for every identity: what
/// `Permissions::may_publish`/`may_subscribe` allow goes through, everything else is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_exactly_the_generated_permissions() {
    let s = Secure::start();
    let h1 = s.hive.clone();
    let h2: HiveId = "h2".parse().expect("id");
    let (w0, w1) = (s.pool[0].clone(), s.pool[1].clone());
    let other: WorkerId = "wrk-other".parse().expect("id");
    let job: rbee_bus::JobId = "job-1".parse().expect("id");
    let publish = vec![
        subject::hive_heartbeat(&h1),
        subject::hive_heartbeat(&h2),
        subject::worker_heartbeat(&w0),
        subject::worker_heartbeat(&w1),
        subject::worker_lifecycle(&w0),
        subject::worker_lifecycle(&other),
        subject::hive_spawn(&h1),
        subject::hive_stop(&h1),
        subject::hive_workers(&h1),
        subject::hive_models(&h2),
        subject::hive_devices(&h1),
        subject::worker_jobs(&w0),
        subject::job_tokens(&job),
        subject::job_status(&job),
        subject::job_cancel(&job),
        subject::QUEEN_JOBS_SUBMIT.to_owned(),
        subject::QUEEN_HELLO.to_owned(),
        "$JS.API.STREAM.DELETE.RBEE_JOBS".to_owned(),
        "$JS.API.STREAM.INFO.RBEE_JOBS".to_owned(),
        "_INBOX.x".to_owned(),
        "_INBOX_queen.x".to_owned(),
        "rbee.other".to_owned(),
    ];
    let subscribe = vec![
        subject::HIVE_HEARTBEAT_ALL.to_owned(),
        subject::WORKER_HEARTBEAT_ALL.to_owned(),
        subject::WORKER_LIFECYCLE_ALL.to_owned(),
        subject::JOB_TOKENS_ALL.to_owned(),
        subject::JOB_STATUS_ALL.to_owned(),
        subject::JOB_CANCEL_ALL.to_owned(),
        "rbee.job.>".to_owned(),
        subject::ALL.to_owned(),
        ">".to_owned(),
        subject::hive_spawn(&h1),
        subject::hive_spawn(&h2),
        subject::HIVE_SPAWN_ALL.to_owned(),
        subject::worker_jobs(&w0),
        subject::worker_jobs(&w1),
        subject::WORKER_JOBS_ALL.to_owned(),
        subject::QUEEN_JOBS_SUBMIT.to_owned(),
        subject::QUEEN_HELLO.to_owned(),
        "_INBOX.>".to_owned(),
        "_INBOX_queen.>".to_owned(),
        "$SRV.PING".to_owned(),
        "$SRV.PING.rbee-hive".to_owned(),
        "$JS.API.>".to_owned(),
    ];
    let roles =
        vec![Role::Queen, Role::Hive { hive_id: h1.clone() }, s.worker_role(0), Role::Observer, Role::Cli];
    let mut mismatches = Vec::new();
    for role in &roles {
        let p = s.permissions(role);
        let user = s.identity(role).user().to_owned();
        // Publishing.
        let bus = s.connect(role).await;
        let since = Instant::now();
        for subj in &publish {
            bus.client().publish(subj.clone(), "{}".into()).await.expect("publish call");
        }
        let expected_pub: Vec<&String> = publish.iter().filter(|x| !p.may_publish(x)).collect();
        // Subscribing, on a second connection so the two kinds of denial are told apart.
        let sub_bus = s.connect(role).await;
        let mut subs = Vec::new();
        for pattern in &subscribe {
            subs.push(sub_bus.client().subscribe(pattern.clone()).await.expect("subscribe call"));
        }
        let expected_sub: Vec<&String> = subscribe.iter().filter(|x| !p.may_subscribe(x)).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while (bus.denials().count() < expected_pub.len() || sub_bus.denials().count() < expected_sub.len())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(bus.denials().count(), expected_pub.len(), "{user}: publish denials {expected_pub:?}");
        assert_eq!(
            sub_bus.denials().count(),
            expected_sub.len(),
            "{user}: subscribe denials {expected_sub:?}"
        );
        for subj in &publish {
            let denied = bus.denials().denied_since(subj, since);
            if denied == p.may_publish(subj) {
                mismatches.push(format!("{user} publish {subj}: server denied={denied}"));
            }
        }
        for pattern in &subscribe {
            let denied = sub_bus.denials().denied_since(pattern, since);
            if denied == p.may_subscribe(pattern) {
                mismatches.push(format!("{user} subscribe {pattern}: server denied={denied}"));
            }
        }
        drop(subs);
    }
    assert!(mismatches.is_empty(), "server and generator disagree:\n{}", mismatches.join("\n"));
}
