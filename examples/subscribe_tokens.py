#!/usr/bin/env python3
"""Submit a job over NATS and stream its tokens, validating every message against schemas/.

    .venv/bin/python examples/subscribe_tokens.py "What is the capital of France?"
    .venv/bin/python examples/subscribe_tokens.py --model smollm2-135m-instruct --max-tokens 64 "Hi"
    .venv/bin/python examples/subscribe_tokens.py --self-test      # offline: checks the validation logic

What it does, in the order that makes it race-free:
  1. picks the job id itself (`job-<hex>`; SubmitJob may carry `job_id`),
  2. subscribes to rbee.job.<id>.tokens and rbee.job.<id>.status (one subscription, rbee.job.<id>.*),
  3. submits SubmitJob on rbee.queen.jobs.submit (request/reply) and checks the SubmitJobReply,
  4. prints the text of each TokenChunk as it arrives (stdout) and each JobStatus (stderr),
  5. stops after the first status whose `state` is `finished`.
Every message it sends or receives is validated against the JSON Schema that schemas/index.json names for
its subject (the request's `reply` or `error_reply` schema for the reply). On Ctrl-C or --timeout it
publishes a JobCancel.

Exit status: 0 done; 1 a message failed validation; 2 the submit was refused (WireError), went
unanswered, or the job did not finish in time; 3 the job finished with finish_reason `error`.
"""

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from jsonschema import Draft202012Validator, FormatChecker

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SUBMIT_SUBJECT = "rbee.queen.jobs.submit"
DEFAULT_MODEL = "smollm2-135m-instruct"


def format_checker() -> FormatChecker:
    """The standard formats plus the integer/float widths schemars writes (`uint32`, `uint64`, ...)."""
    checker = FormatChecker()
    widths = {"uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}
    for name, bits in widths.items():
        def check_uint(value: Any, bits: int = bits) -> bool:
            if isinstance(value, bool) or not isinstance(value, int):
                return True  # `type` judges non-integers
            return 0 <= value < (1 << bits)
        checker.checks(name)(check_uint)
    for name in ("int32", "int64"):
        bits = 32 if name == "int32" else 64
        def check_int(value: Any, bits: int = bits) -> bool:
            if isinstance(value, bool) or not isinstance(value, int):
                return True
            return -(1 << (bits - 1)) <= value < (1 << (bits - 1))
        checker.checks(name)(check_int)
    for name in ("float", "double"):
        checker.checks(name)(lambda value: True)
    return checker


class Schemas:
    """schemas/index.json plus one Draft 2020-12 validator per message type."""

    def __init__(self, directory: Path = SCHEMAS_DIR) -> None:
        self.directory = directory
        with open(directory / "index.json", encoding="utf-8") as f:
            self.subjects: list[dict] = json.load(f)["subjects"]
        self._validators: dict[str, Draft202012Validator] = {}
        self._formats = format_checker()

    def validator(self, name: str) -> Draft202012Validator:
        if name not in self._validators:
            with open(self.directory / f"{name}.json", encoding="utf-8") as f:
                schema = json.load(f)
            Draft202012Validator.check_schema(schema)
            self._validators[name] = Draft202012Validator(schema, format_checker=self._formats)
        return self._validators[name]

    def entry_for(self, subject: str) -> Optional[dict]:
        """The index entry whose pattern matches the subject token by token (`*` is one token)."""
        tokens = subject.split(".")
        for entry in self.subjects:
            pattern = entry["subject"].split(".")
            if len(pattern) == len(tokens) and all(p in ("*", t) for p, t in zip(pattern, tokens)):
                return entry
        return None

    def errors(self, name: str, message: Any) -> list[str]:
        """Every way `message` breaks schema `name`, as `path: message` lines (empty: valid)."""
        out = []
        for error in sorted(self.validator(name).iter_errors(message), key=lambda e: list(e.path)):
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            out.append(f"{path}: {error.message}")
        return out


def compact(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class JobWatch:
    """Validates and renders the messages of one job; `handle` returns True at the finishing status."""

    def __init__(self, schemas: Schemas, job_id: str, out=sys.stdout, log=sys.stderr) -> None:
        self.schemas = schemas
        self.job_id = job_id
        self.out = out
        self.log = log
        self.failures: list[str] = []
        self.received = 0
        self.next_seq = 0
        self.text: list[str] = []
        self.finished: Optional[dict] = None

    def fail(self, subject: str, why: str, raw: Any = None) -> None:
        line = f"INVALID {subject}: {why}"
        if raw is not None:
            line += f"\n    message: {raw if isinstance(raw, str) else compact(raw)}"
        self.failures.append(line)
        print(f"\n{line}", file=self.log, flush=True)

    def handle(self, subject: str, data: bytes) -> bool:
        self.received += 1
        entry = self.schemas.entry_for(subject)
        if entry is None:
            self.fail(subject, "no schema in schemas/index.json matches this subject")
            return False
        name = entry["schema"]
        try:
            message = json.loads(data)
        except ValueError as e:
            self.fail(subject, f"not JSON ({e})", data.decode("utf-8", "replace"))
            return False
        errors = self.schemas.errors(name, message)
        if errors:
            self.fail(subject, f"does not match {name}:\n    " + "\n    ".join(errors), message)
        if not isinstance(message, dict):
            return False
        if message.get("job_id") != self.job_id:
            self.fail(subject, f"job_id {message.get('job_id')!r}, expected {self.job_id!r}", message)
        if name == "TokenChunk":
            self.on_tokens(message)
            return False
        if name == "JobStatus":
            return self.on_status(message)
        return False

    def on_tokens(self, chunk: dict) -> None:
        seq = chunk.get("seq")
        if isinstance(seq, int) and seq != self.next_seq:
            print(f"\n[warning] token chunk seq {seq}, expected {self.next_seq} (lost or restarted)",
                  file=self.log, flush=True)
        if isinstance(seq, int):
            self.next_seq = seq + 1
        text = chunk.get("text")
        if isinstance(text, str):
            self.text.append(text)
            self.out.write(text)
            self.out.flush()

    def on_status(self, status: dict) -> bool:
        state = status.get("state")
        publisher = (status.get("meta") or {}).get("publisher", "?")
        if state == "queued":
            detail = status.get("reason", "")
        elif state in ("scheduled", "running"):
            detail = f"worker {status.get('worker_id')}"
        elif state == "accepted":
            detail = f"worker {status.get('worker_id')}, {status.get('prompt_tokens')} prompt tokens"
        elif state == "finished":
            usage = status.get("usage") or {}
            detail = f"{status.get('finish_reason')}"
            if status.get("error"):
                detail += f": {status['error']}"
            detail += (f"; prompt {usage.get('prompt_tokens')} tokens, completion "
                       f"{usage.get('completion_tokens')} tokens")
            if usage.get("time_to_first_token_ms") is not None:
                detail += f", first token {usage['time_to_first_token_ms']:.0f} ms"
            if usage.get("decode_tokens_per_second") is not None:
                detail += f", {usage['decode_tokens_per_second']:.1f} tok/s"
        else:
            detail = compact(status)
        if state == "finished" and self.text:
            print(file=self.out, flush=True)  # end the streamed text's line
        print(f"[{state} from {publisher}] {detail}", file=self.log, flush=True)
        if state == "finished":
            self.finished = status
            return True
        return False


def build_submit(job_id: str, model: str, prompt: str, system: Optional[str],
                 max_tokens: Optional[int], temperature: Optional[float], seed: Optional[int]) -> dict:
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    submit = {"v": 1, "job_id": job_id, "model_id": model, "prompt": {"kind": "chat", "messages": messages}}
    params = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature), ("seed", seed))
              if v is not None}
    if params:
        submit["params"] = params
    return submit


def cancel_message(job_id: str, reason: str) -> dict:
    return {
        "v": 1,
        "meta": {"publisher": f"client-{os.getpid()}", "epoch": secrets.token_hex(8), "seq": 1,
                 "sent_at_ms": int(time.time() * 1000)},
        "job_id": job_id,
        "reason": reason,
    }


async def run(args: argparse.Namespace) -> int:
    import nats
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeoutError

    schemas = Schemas()
    submit_entry = schemas.entry_for(SUBMIT_SUBJECT)
    assert submit_entry is not None and submit_entry["kind"] == "request"

    job_id = f"job-{secrets.token_hex(8)}"
    submit = build_submit(job_id, args.model, args.prompt, args.system, args.max_tokens, args.temperature,
                          args.seed)
    errors = schemas.errors(submit_entry["schema"], submit)
    if errors:
        print("the SubmitJob this script built is invalid:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1

    nc = await nats.connect(servers=args.server.split(","), name="rbee-subscribe-tokens")
    watch = JobWatch(schemas, job_id)
    queue: asyncio.Queue = asyncio.Queue()

    async def enqueue(msg) -> None:
        queue.put_nowait((msg.subject, msg.data))

    # Subscribe first, so not one token or status can be missed, then make sure the server has the
    # subscription (flush is a PING/PONG round trip) before the submit goes out. One subscription to
    # rbee.job.<id>.* (tokens, status, cancel) rather than one per subject: nats-py delivers each
    # subscription from its own task, so two of them could hand over the finishing status before the
    # last tokens; one subscription keeps the order the server delivered them in.
    await nc.subscribe(f"rbee.job.{job_id}.*", cb=enqueue)
    await nc.flush()

    async def cancel(reason: str) -> None:
        message = cancel_message(job_id, reason)
        assert not schemas.errors("JobCancel", message)
        await nc.publish(f"rbee.job.{job_id}.cancel", json.dumps(message).encode())
        await nc.flush()
        print(f"[cancel sent] {reason}", file=sys.stderr)

    print(f"[submit] {job_id} model {args.model} on {nc.connected_url.geturl()}", file=sys.stderr)
    try:
        reply = await nc.request(SUBMIT_SUBJECT, json.dumps(submit).encode(), timeout=args.submit_timeout)
    except NoRespondersError:
        print(f"no queen is listening on {SUBMIT_SUBJECT} (is rbee-queen running?)", file=sys.stderr)
        await nc.close()
        return 2
    except NatsTimeoutError:
        print(f"no answer on {SUBMIT_SUBJECT} within {args.submit_timeout} s", file=sys.stderr)
        await nc.close()
        return 2

    try:
        answer = json.loads(reply.data)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "error" in answer:
        name = submit_entry["error_reply"]
        errors = schemas.errors(name, answer)
        if errors:
            watch.fail("reply", f"does not match {name}:\n    " + "\n    ".join(errors), answer)
        error = answer.get("error") or {}
        print(f"submit refused: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        await nc.close()
        return 1 if watch.failures else 2
    name = submit_entry["reply"]
    errors = schemas.errors(name, answer) if answer is not None else ["not JSON"]
    if errors:
        watch.fail("reply", f"does not match {name}:\n    " + "\n    ".join(errors),
                   answer if answer is not None else reply.data.decode("utf-8", "replace"))
    elif (answer["job_id"] != job_id or answer["tokens_subject"] != f"rbee.job.{job_id}.tokens"
          or answer["status_subject"] != f"rbee.job.{job_id}.status"):
        watch.fail("reply", "names another job or other subjects than the ones subscribed", answer)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + args.timeout
    timed_out = interrupted = False
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            timed_out = True
            break
        get = asyncio.ensure_future(queue.get())
        stopped = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({get, stopped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            stopped.cancel()
            if stopped in done:
                interrupted = True
            else:
                timed_out = True
            break
        stopped.cancel()
        subject, data = get.result()
        if watch.handle(subject, data):
            break

    if timed_out or interrupted:
        await cancel("client timed out" if timed_out else "client interrupted")
    await nc.drain()  # delivers what already arrived: validate it too
    while not queue.empty():
        watch.handle(*queue.get_nowait())

    print(f"[done] {watch.received} messages received, {len(watch.failures)} failed validation",
          file=sys.stderr)
    if watch.failures:
        return 1
    if timed_out:
        print(f"the job did not finish within {args.timeout} s", file=sys.stderr)
        return 2
    if interrupted:
        return 2
    if watch.finished and watch.finished.get("finish_reason") == "error":
        return 3
    return 0


def self_test() -> int:
    """Offline: hand-written valid and invalid messages through the same code the live path uses."""
    import io

    schemas = Schemas()
    results: list[tuple[str, bool]] = []

    def check(name: str, ok: bool) -> None:
        results.append((name, ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}")

    # Subject patterns -> schema names, from index.json.
    for subject, want in [
        ("rbee.job.job-1.tokens", "TokenChunk"), ("rbee.job.job-1.status", "JobStatus"),
        ("rbee.job.job-1.cancel", "JobCancel"), ("rbee.queen.jobs.submit", "SubmitJob"),
        ("rbee.hive.h1.heartbeat", "HiveHeartbeat"), ("rbee.worker.w1.jobs", "JobAssignment"),
        ("rbee.job.a.b.tokens", None), ("rbee.nothing", None),
    ]:
        entry = schemas.entry_for(subject)
        check(f"subject {subject} -> {want}", (entry["schema"] if entry else None) == want)
    submit_entry = schemas.entry_for(SUBMIT_SUBJECT)
    check("submit reply schemas", submit_entry is not None
          and (submit_entry["reply"], submit_entry["error_reply"]) == ("SubmitJobReply", "WireError"))

    job = "job-00112233aabbccdd"
    meta = {"publisher": "w1", "epoch": "e1", "seq": 1, "sent_at_ms": 1_700_000_000_000}
    submit = build_submit(job, DEFAULT_MODEL, "What is the capital of France?", None, 32, 0.0, 7)

    def valid(name: str, label: str, message: Any) -> None:
        errors = schemas.errors(name, message)
        check(f"{name} valid: {label}", not errors)
        for e in errors:
            print(f"       {e}")

    def invalid(name: str, label: str, message: Any) -> None:
        check(f"{name} invalid: {label}", bool(schemas.errors(name, message)))

    valid("SubmitJob", "built by this script", submit)
    valid("SubmitJob", "text prompt, no job_id", {"v": 1, "model_id": "m", "prompt": {"kind": "text", "text": "hi"}})
    invalid("SubmitJob", "no prompt", {"v": 1, "model_id": "m"})
    invalid("SubmitJob", "job_id with a dot", {**submit, "job_id": "job.1"})
    invalid("SubmitJob", "chat without messages", {**submit, "prompt": {"kind": "chat"}})
    invalid("SubmitJob", "unknown prompt kind", {**submit, "prompt": {"kind": "image", "text": "x"}})
    invalid("SubmitJob", "max_tokens above uint32", {**submit, "params": {"max_tokens": 1 << 32}})
    valid("SubmitJobReply", "normal", {"v": 1, "job_id": job, "tokens_subject": f"rbee.job.{job}.tokens",
                                       "status_subject": f"rbee.job.{job}.status"})
    invalid("SubmitJobReply", "no status_subject", {"v": 1, "job_id": job, "tokens_subject": "x"})
    valid("WireError", "unknown_model", {"v": 1, "error": {"code": "unknown_model", "message": "no such model"}})
    invalid("WireError", "unknown code", {"v": 1, "error": {"code": "oops", "message": "?"}})
    valid("JobCancel", "built by this script", cancel_message(job, "test"))

    def chunk(n: int, text: str, total: int, **overrides: Any) -> dict:
        message = {"v": 1, "meta": {**meta, "seq": n + 10}, "job_id": job, "worker_id": "w1", "seq": n,
                   "text": text, "tokens": 1, "total_tokens": total}
        message.update(overrides)
        return message

    def status(state: str, **fields: Any) -> dict:
        message = {"v": 1, "meta": {**meta, "publisher": "queen"}, "job_id": job, "model_id": DEFAULT_MODEL,
                   "state": state}
        message.update(fields)
        return message

    finished = status("finished", finish_reason="stop", worker_id="w1", error=None,
                      usage={"prompt_tokens": 12, "completion_tokens": 3, "time_to_first_token_ms": 40.5,
                             "decode_tokens_per_second": 70.2})
    good_stream = [
        ("status", status("queued", reason="waiting for a worker")),
        ("status", status("scheduled", worker_id="w1")),
        ("status", status("accepted", worker_id="w1", prompt_tokens=12)),
        ("status", status("running", worker_id="w1")),
        ("tokens", chunk(0, "The capital", 2)), ("tokens", chunk(1, " of France is", 5)),
        ("tokens", chunk(2, " Paris.", 7)),
        ("status", finished),
    ]

    def feed(stream: list) -> tuple[JobWatch, bool, str]:
        out, log = io.StringIO(), io.StringIO()
        watch = JobWatch(schemas, job, out=out, log=log)
        done = False
        for kind, message in stream:
            data = message if isinstance(message, bytes) else json.dumps(message).encode()
            subject = kind if "." in kind else f"rbee.job.{job}.{kind}"
            done = watch.handle(subject, data)
            if done:
                break
        return watch, done, out.getvalue()

    watch, done, text = feed(good_stream)
    check("valid stream: no failures", not watch.failures)
    for f in watch.failures:
        print(f"       {f}")
    check("valid stream: stops at finished", done and watch.finished is not None)
    check("valid stream: text", text == "The capital of France is Paris.\n")

    bad_cases = [
        ("token chunk without total_tokens", ("tokens", {k: v for k, v in chunk(0, "x", 1).items()
                                                        if k != "total_tokens"})),
        ("token chunk with negative tokens", ("tokens", chunk(0, "x", 1, tokens=-1))),
        ("token chunk with seq above uint64", ("tokens", chunk(0, "x", 1, seq=1 << 64))),
        ("status with unknown state", ("status", status("exploded"))),
        ("accepted without prompt_tokens", ("status", status("accepted", worker_id="w1"))),
        ("finished without usage", ("status", status("finished", finish_reason="stop"))),
        ("finished with unknown finish_reason", ("status", {**finished, "finish_reason": "bored"})),
        ("status without meta", ("status", {k: v for k, v in finished.items() if k != "meta"})),
        ("not JSON", ("tokens", b"{nope")),
        ("another job's chunk", ("tokens", chunk(0, "x", 1, job_id="job-other"))),
        ("subject with no schema", ("rbee.job.x.y.tokens", chunk(0, "x", 1))),
    ]
    for label, item in bad_cases:
        watch, _, _ = feed([item])
        check(f"rejected: {label}", len(watch.failures) >= 1)

    watch, done, _ = feed([("status", {k: v for k, v in finished.items() if k != "usage"})])
    check("an invalid finished status still ends the stream", done and len(watch.failures) == 1)
    watch, done, _ = feed(good_stream[:5] + [("tokens", {**chunk(1, "x", 2), "text": None})] + good_stream[7:])
    check("one invalid chunk in a stream: one failure, still finishes", done and len(watch.failures) == 1)

    passed = sum(ok for _, ok in results)
    failed = len(results) - passed
    print(f"self-test: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--server", default="nats://127.0.0.1:4222",
                        help="NATS server URL(s), comma separated (default: nats://127.0.0.1:4222)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default: {DEFAULT_MODEL})")
    parser.add_argument("--system", help="a system message before the prompt")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--submit-timeout", type=float, default=10.0, help="seconds to wait for the queen's reply")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job to finish")
    parser.add_argument("--self-test", action="store_true", help="validate sample messages offline and exit")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
