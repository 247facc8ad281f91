//! Arbitrary bytes on any rbee subject decode to a typed error, never a panic.

mod samples;

use proptest::prelude::*;
use rbee_bus::rpc::{decode, decode_reply};
use rbee_bus::*;

fn decode_as(name: &str, bytes: &[u8]) -> Result<(), BusError> {
    let s = "rbee.test";
    match name {
        "HiveHeartbeat" => decode::<HiveHeartbeat>(s, bytes).map(drop),
        "WorkerHeartbeat" => decode::<WorkerHeartbeat>(s, bytes).map(drop),
        "WorkerLifecycle" => decode::<WorkerLifecycle>(s, bytes).map(drop),
        "SpawnRequest" => decode::<SpawnRequest>(s, bytes).map(drop),
        "SpawnReply" => decode_reply::<SpawnReply>(s, bytes).map(drop),
        "StopRequest" => decode::<StopRequest>(s, bytes).map(drop),
        "EmbedRequest" => decode::<EmbedRequest>(s, bytes).map(drop),
        "EmbedReply" => decode_reply::<EmbedReply>(s, bytes).map(drop),
        "StopReply" => decode_reply::<StopReply>(s, bytes).map(drop),
        "ListRequest" => decode::<ListRequest>(s, bytes).map(drop),
        "WorkerList" => decode_reply::<WorkerList>(s, bytes).map(drop),
        "ModelList" => decode_reply::<ModelList>(s, bytes).map(drop),
        "DeviceList" => decode_reply::<DeviceList>(s, bytes).map(drop),
        "ModelImportRequest" => decode::<ModelImportRequest>(s, bytes).map(drop),
        "ModelReply" => decode_reply::<ModelReply>(s, bytes).map(drop),
        "ModelPullRequest" => decode::<ModelPullRequest>(s, bytes).map(drop),
        "ModelPullAccepted" => decode_reply::<ModelPullAccepted>(s, bytes).map(drop),
        "ModelPullEvent" => decode::<ModelPullEvent>(s, bytes).map(drop),
        "ModelRemoveRequest" => decode::<ModelRemoveRequest>(s, bytes).map(drop),
        "ModelRemoveReply" => decode_reply::<ModelRemoveReply>(s, bytes).map(drop),
        "JobAssignment" => decode::<JobAssignment>(s, bytes).map(drop),
        "JobAccepted" => decode_reply::<JobAccepted>(s, bytes).map(drop),
        "TokenChunk" => decode::<TokenChunk>(s, bytes).map(drop),
        "JobStatus" => decode::<JobStatus>(s, bytes).map(drop),
        "JobCancel" => decode::<JobCancel>(s, bytes).map(drop),
        "SubmitJob" => decode::<SubmitJob>(s, bytes).map(drop),
        "SubmitJobReply" => decode_reply::<SubmitJobReply>(s, bytes).map(drop),
        "QueenHello" => decode::<QueenHello>(s, bytes).map(drop),
        "LeaderLease" => decode::<LeaderLease>(s, bytes).map(drop),
        "WireError" => decode::<WireError>(s, bytes).map(drop),
        other => panic!("no decoder for {other}"),
    }
}

#[test]
fn every_sample_round_trips() {
    for (name, value) in samples::all() {
        let bytes = serde_json::to_vec(&value).expect("json");
        let result = decode_as(name, &bytes);
        if name == "WireError" {
            assert!(result.is_ok());
        } else {
            assert!(result.is_ok(), "{name} does not decode: {result:?}");
        }
    }
}

#[test]
fn wire_errors_in_replies_become_remote_errors() {
    let bytes = serde_json::to_vec(&WireError::new(ErrorCode::NoFreeSlot, "busy")).expect("json");
    match decode_reply::<JobAccepted>("rbee.worker.w.jobs", &bytes) {
        Err(BusError::Remote { error, .. }) => assert_eq!(error.code(), ErrorCode::NoFreeSlot),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (name, _) in rbee_bus::contract::schemas() {
            let _ = decode_as(name, &bytes);
        }
    }

    #[test]
    fn mutated_messages_never_panic(index in 0usize..28, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let samples = samples::all();
        let (name, value) = &samples[index % samples.len()];
        let mut bytes = serde_json::to_vec(value).expect("json");
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        // Either an error or a value; a value must still hold valid ids (validated on decode).
        let _ = decode_as(name, &bytes);
    }
}

#[test]
fn bad_ids_inside_messages_are_refused() {
    let mut value = samples::all().into_iter().find(|(n, _)| *n == "JobAssignment").expect("sample").1;
    value["job_id"] = "job.1.>".into();
    let err = decode_as("JobAssignment", &serde_json::to_vec(&value).expect("json")).expect_err("refused");
    assert!(err.to_string().contains("job id"), "{err}");
}
