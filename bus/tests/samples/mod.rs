//! Real values of every message type, shared by the schema and fuzz tests.

use rbee_bus::messages::hive::schema_version;
use rbee_bus::*;

fn meta(publisher: &str) -> EventMeta {
    EventStamper::new(publisher).next()
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid id")
}

/// (schema name, JSON of a real value). Several values per type where variants differ.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    let j = |v: &dyn erased::Ser| v.json();
    let device = DeviceInfo {
        id: "cuda:0".into(),
        kind: DeviceKind::Cuda,
        index: 0,
        name: "NVIDIA H100".into(),
        uuid: Some("GPU-1234".into()),
        total_bytes: 80 << 30,
        free_bytes: 70 << 30,
        utilization_percent: Some(12),
        compute_capability: Some("9.0".into()),
    };
    let worker_summary = |status| HiveWorkerSummary {
        worker_id: id("wrk-1"),
        model_id: id("smollm2-135m-instruct"),
        device: "cpu".into(),
        pid: 4242,
        status,
        started_at_ms: 1_700_000_000_000,
    };
    let model = ModelSummary {
        model_id: id("smollm2-135m-instruct"),
        size_bytes: 98_000_000,
        architecture: "llama".into(),
        parameter_count: 134_515_008,
        quantization: "Q4_1".into(),
        context_length: Some(8192),
        load_failures: None,
    };
    let failing = ModelSummary {
        model_id: id("broken"),
        load_failures: Some(LoadFailures {
            failures: 2,
            last_error:
                "exit status: 1; stderr: error loading model: tensor data is not within the file bounds"
                    .into(),
            retry_at_ms: Some(1_700_000_010_000),
            refused: false,
        }),
        ..model.clone()
    };
    let pull_event = |progress| ModelPullEvent {
        v: SCHEMA_VERSION,
        meta: meta("hive-1"),
        hive_id: id("hive-1"),
        pull_id: id("pull-1"),
        model_id: id("tiny"),
        progress,
    };
    let cpu = CpuInfo { model: "AMD EPYC".into(), physical_cores: 2, logical_cores: 2 };
    let ram = MemoryInfo { total_bytes: 24 << 30, available_bytes: 20 << 30 };
    let usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 8,
        time_to_first_token_ms: Some(40.5),
        decode_tokens_per_second: Some(75.0),
        cached_tokens: 4,
    };
    let status = |state| JobStatus {
        v: SCHEMA_VERSION,
        meta: meta("wrk-1"),
        job_id: id("job-1"),
        model_id: Some(id("smollm2-135m-instruct")),
        state,
        attempt: 1,
        attempt_key: Some("5f0c2a9e8d3b4c1a9e7f6d5c4b3a2918".into()),
    };
    let chat = Prompt::chat(vec![ChatMessage::new("user", "What is the capital of France?")]);
    let params = SamplingParams { seed: Some(7), stop: vec!["\n".into()], ..SamplingParams::default() };
    vec![
        (
            "HiveHeartbeat",
            j(&HiveHeartbeat {
                v: SCHEMA_VERSION,
                meta: meta("hive-a"),
                hive_id: id("hive-a"),
                hostname: "box".into(),
                version: "0.1.0".into(),
                state: HiveState::Online,
                interval_ms: 1000,
                cpu: cpu.clone(),
                ram: ram.clone(),
                devices: vec![device.clone()],
                workers: vec![
                    worker_summary(HiveWorkerStatus::Ready),
                    worker_summary(HiveWorkerStatus::Failed { error: "signal: 9".into() }),
                ],
                models: vec![model.clone()],
            }),
        ),
        (
            "WorkerHeartbeat",
            j(&WorkerHeartbeat {
                v: SCHEMA_VERSION,
                meta: meta("wrk-1"),
                worker_id: id("wrk-1"),
                hive_id: id("hive-a"),
                model_id: id("smollm2-135m-instruct"),
                state: WorkerState::Idle,
                backend: Backend::Cpu,
                device: "cpu".into(),
                slots_total: 4,
                slots_busy: 0,
                ctx_per_slot: 2048,
                tokens_per_second: 0.0,
                memory_bytes: 170 << 20,
                pid: 4242,
                interval_ms: 1000,
                prefix_fingerprints: vec![1, 2, 3],
                jobs_accepted: Some(7),
            }),
        ),
        (
            "WorkerLifecycle",
            j(&WorkerLifecycle {
                v: SCHEMA_VERSION,
                meta: meta("hive-a"),
                hive_id: id("hive-a"),
                worker_id: id("wrk-1"),
                model_id: id("smollm2-135m-instruct"),
                event: LifecycleEvent::Failed { exit: "signal: 9".into(), stderr_tail: vec!["boom".into()] },
            }),
        ),
        (
            "WorkerLifecycle",
            j(&WorkerLifecycle {
                v: SCHEMA_VERSION,
                meta: meta("hive-a"),
                hive_id: id("hive-a"),
                worker_id: id("wrk-1"),
                model_id: id("smollm2-135m-instruct"),
                event: LifecycleEvent::Started { pid: 1 },
            }),
        ),
        (
            "SpawnRequest",
            j(&SpawnRequest {
                v: SCHEMA_VERSION,
                model_id: id("smollm2-135m-instruct"),
                device: Some("cpu".into()),
                slots: Some(4),
                ctx_per_slot: Some(2048),
                worker_type: Some(WorkerKind::CpuLlm),
                worker_id: None,
                threads: None,
                fence: None,
            }),
        ),
        (
            "SpawnReply",
            j(&SpawnReply { v: SCHEMA_VERSION, worker_id: id("wrk-1"), pid: 4242, device: "cpu".into() }),
        ),
        (
            "StopRequest",
            j(&StopRequest {
                v: SCHEMA_VERSION,
                worker_id: id("wrk-1"),
                deadline_ms: Some(5000),
                fence: None,
            }),
        ),
        (
            "StopReply",
            j(&StopReply {
                v: SCHEMA_VERSION,
                worker_id: id("wrk-1"),
                graceful: true,
                exit: "exit status: 0".into(),
            }),
        ),
        ("ListRequest", j(&ListRequest { v: schema_version() })),
        (
            "WorkerList",
            j(&WorkerList { v: SCHEMA_VERSION, workers: vec![worker_summary(HiveWorkerStatus::Busy)] }),
        ),
        ("ModelList", j(&ModelList { v: SCHEMA_VERSION, models: vec![model.clone(), failing] })),
        ("DeviceList", j(&DeviceList { v: SCHEMA_VERSION, cpu, ram, devices: vec![device] })),
        (
            "ModelImportRequest",
            j(&ModelImportRequest {
                v: SCHEMA_VERSION,
                path: "/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                model_id: Some(id("smollm2")),
            }),
        ),
        (
            "ModelImportRequest",
            j(&ModelImportRequest { v: SCHEMA_VERSION, path: "/m/x.gguf".into(), model_id: None }),
        ),
        ("ModelReply", j(&ModelReply { v: SCHEMA_VERSION, model: model.clone(), sha256: "ab".repeat(32) })),
        (
            "ModelPullRequest",
            j(&ModelPullRequest {
                v: SCHEMA_VERSION,
                pull_id: id("pull-1"),
                url: "https://example.org/tiny.gguf".into(),
                model_id: Some(id("tiny")),
                sha256: Some("ab".repeat(32)),
            }),
        ),
        (
            "ModelPullAccepted",
            j(&ModelPullAccepted { v: SCHEMA_VERSION, pull_id: id("pull-1"), model_id: id("tiny") }),
        ),
        (
            "ModelPullEvent",
            j(&pull_event(PullProgress::Progress { downloaded: 1 << 20, total: Some(98_000_000) })),
        ),
        ("ModelPullEvent", j(&pull_event(PullProgress::Progress { downloaded: 4096, total: None }))),
        ("ModelPullEvent", j(&pull_event(PullProgress::Done { model: model.clone() }))),
        (
            "ModelPullEvent",
            j(&pull_event(PullProgress::Failed {
                error: WireError::new(
                    ErrorCode::BadRequest,
                    "https://example.org/tiny.gguf answered HTTP 404",
                )
                .error,
            })),
        ),
        ("ModelRemoveRequest", j(&ModelRemoveRequest { v: SCHEMA_VERSION, model_id: id("tiny") })),
        (
            "ModelRemoveReply",
            j(&ModelRemoveReply { v: SCHEMA_VERSION, model_id: id("tiny"), freed_bytes: 98_000_000 }),
        ),
        (
            "JobAssignment",
            j(&JobAssignment::new(id("job-1"), id("smollm2-135m-instruct"), chat.clone(), params.clone())),
        ),
        (
            "JobAssignment",
            j(&JobAssignment {
                attempt: 2,
                attempt_key: Some("5f0c2a9e8d3b4c1a9e7f6d5c4b3a2918".into()),
                resume: Some(Resume {
                    text: "The capital of France".into(),
                    token_ids: vec![504, 3575, 282, 4649],
                    next_seq: 3,
                    completion_tokens: 4,
                }),
                ..JobAssignment::new(id("job-1"), id("smollm2-135m-instruct"), chat.clone(), params.clone())
            }),
        ),
        (
            "JobAssignment",
            j(&JobAssignment::new(
                id("job-2"),
                id("smollm2-135m-instruct"),
                Prompt::Text { text: "Once upon".into() },
                SamplingParams::default(),
            )),
        ),
        (
            "JobAssignment",
            j(&JobAssignment::new(
                id("job-3"),
                id("smollm2-135m-instruct"),
                Prompt::Chat {
                    messages: vec![
                        ChatMessage::new("user", "Weather in Paris?"),
                        ChatMessage {
                            tool_calls: vec![ToolCall {
                                id: "call_1".into(),
                                name: "get_weather".into(),
                                arguments: r#"{"city":"Paris"}"#.into(),
                            }],
                            ..ChatMessage::new("assistant", "")
                        },
                        ChatMessage {
                            tool_call_id: Some("call_1".into()),
                            ..ChatMessage::new("tool", "18 C")
                        },
                    ],
                    tools: vec![ToolDef {
                        name: "get_weather".into(),
                        description: Some("Current weather of a city".into()),
                        parameters: Some(serde_json::json!({
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"]
                        })),
                    }],
                },
                SamplingParams {
                    tool_choice: ToolChoice::Function { name: "get_weather".into() },
                    logprobs: true,
                    top_logprobs: 2,
                    logit_bias: vec![LogitBias { token: 42, bias: -100.0 }],
                    presence_penalty: 0.5,
                    ..SamplingParams::default()
                },
            )),
        ),
        (
            "JobAssignment",
            j(&JobAssignment::new(
                id("job-4"),
                id("smollm2-135m-instruct"),
                chat.clone(),
                SamplingParams {
                    response_format: ResponseFormat::JsonSchema {
                        name: "answer".into(),
                        schema: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                        strict: true,
                    },
                    ..SamplingParams::default()
                },
            )),
        ),
        (
            "TokenChunk",
            j(&TokenChunk {
                v: SCHEMA_VERSION,
                meta: meta("wrk-1"),
                job_id: id("job-3"),
                worker_id: id("wrk-1"),
                seq: 1,
                text: String::new(),
                tokens: 14,
                total_tokens: 15,
                attempt: 1,
                attempt_key: Some("5f0c2a9e8d3b4c1a9e7f6d5c4b3a2918".into()),
                tool_calls: vec![ToolCallChunk {
                    index: 0,
                    id: "call_00000000abc00".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city": "Paris"}"#.into(),
                }],
                logprobs: vec![TokenLogprob {
                    token: "Paris".into(),
                    bytes: b"Paris".to_vec(),
                    logprob: -0.12,
                    top: vec![TopLogprob {
                        token: "London".into(),
                        bytes: b"London".to_vec(),
                        logprob: -2.5,
                    }],
                }],
                token_ids: Vec::new(),
            }),
        ),
        (
            "EmbedRequest",
            j(&EmbedRequest {
                v: SCHEMA_VERSION,
                model_id: id("smollm2-135m-instruct"),
                inputs: vec!["The cat sat on the mat.".into(), "A dog barked.".into()],
            }),
        ),
        (
            "EmbedReply",
            j(&EmbedReply {
                v: SCHEMA_VERSION,
                model_id: id("smollm2-135m-instruct"),
                workers: vec![id("wrk-1")],
                dimensions: 3,
                pooling: "mean".into(),
                embeddings: vec![vec![0.6, 0.8, 0.0], vec![0.0, 0.6, 0.8]],
                prompt_tokens: 11,
            }),
        ),
        (
            "JobAccepted",
            j(&JobAccepted {
                v: SCHEMA_VERSION,
                job_id: id("job-1"),
                worker_id: id("wrk-1"),
                prompt_tokens: 12,
                accepted_seq: Some(7),
            }),
        ),
        (
            "TokenChunk",
            j(&TokenChunk {
                v: SCHEMA_VERSION,
                meta: meta("wrk-1"),
                job_id: id("job-1"),
                worker_id: id("wrk-1"),
                seq: 0,
                text: "The capital".into(),
                tokens: 2,
                total_tokens: 2,
                attempt: 1,
                attempt_key: Some("5f0c2a9e8d3b4c1a9e7f6d5c4b3a2918".into()),
                tool_calls: Vec::new(),
                logprobs: Vec::new(),
                token_ids: vec![504, 3575],
            }),
        ),
        ("JobStatus", j(&status(JobState::Queued { reason: "waiting for a slot on 2 workers".into() }))),
        ("JobStatus", j(&status(JobState::Scheduled { worker_id: id("wrk-1") }))),
        (
            "JobStatus",
            j(&status(JobState::Migrating {
                from_worker: id("wrk-1"),
                completion_tokens: 4,
                reason: "worker wrk-1 was lost after 4 tokens".into(),
            })),
        ),
        ("JobStatus", j(&status(JobState::Accepted { worker_id: id("wrk-1"), prompt_tokens: 12 }))),
        ("JobStatus", j(&status(JobState::Running { worker_id: id("wrk-1") }))),
        (
            "JobStatus",
            j(&status(JobState::Finished {
                finish_reason: FinishReason::Stop,
                usage: usage.clone(),
                error: None,
                worker_id: Some(id("wrk-1")),
            })),
        ),
        (
            "JobStatus",
            j(&status(JobState::Finished {
                finish_reason: FinishReason::Error,
                usage,
                error: Some("worker wrk-1 died".into()),
                worker_id: None,
            })),
        ),
        (
            "JobCancel",
            j(&JobCancel {
                v: SCHEMA_VERSION,
                meta: meta("queen"),
                job_id: id("job-1"),
                reason: "client left".into(),
                worker_id: None,
                fence: None,
            }),
        ),
        (
            "SubmitJob",
            j(&SubmitJob {
                v: SCHEMA_VERSION,
                model_id: id("smollm2-135m-instruct"),
                prompt: chat,
                params,
                job_id: Some(id("job-mine")),
                deadline_ms: Some(60_000),
                keep_alive_ms: None,
            }),
        ),
        (
            "SubmitJobReply",
            j(&SubmitJobReply {
                v: SCHEMA_VERSION,
                job_id: id("job-1"),
                tokens_subject: "rbee.job.job-1.tokens".into(),
                status_subject: "rbee.job.job-1.status".into(),
            }),
        ),
        ("QueenHello", j(&QueenHello { v: SCHEMA_VERSION, meta: meta("queen"), fence: Some(42) })),
        (
            "LeaderLease",
            j(&rbee_bus::LeaderLease {
                v: SCHEMA_VERSION,
                queen_id: "queen-a".into(),
                epoch: "3f2a".into(),
                fence: 42,
                http: vec!["http://198.18.0.1:7833".into()],
                lease_ms: 3000,
                renewed_at_ms: 1_764_000_000_000,
            }),
        ),
        (
            "WireError",
            j(&WireError::invalid_field("temperature", "invalid temperature: 5 is outside [0, 2]")),
        ),
        ("WireError", j(&WireError::new(ErrorCode::NoFreeSlot, "all 4 slots are busy"))),
        ("WireError", j(&WireError::new(ErrorCode::Conflict, "model tiny is in use by worker wrk-1"))),
    ]
}

mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("serializable")
        }
    }
}
