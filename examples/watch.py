#!/usr/bin/env python3
"""Print every message on the rbee bus: one line per message, subject then compact JSON.

    .venv/bin/python examples/watch.py                      # rbee.>  (everything rbee publishes)
    .venv/bin/python examples/watch.py 'rbee.job.*.tokens'  # one kind of message
    .venv/bin/python examples/watch.py --server nats://127.0.0.1:4223

Needs nats-py (in .venv after `make setup`). Stop it with Ctrl-C.
"""

import argparse
import asyncio
import json
import signal
import sys

import nats


def render(data: bytes) -> str:
    """Compact JSON when the payload is JSON, else the raw text (or bytes) as it came."""
    try:
        return json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return repr(data)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", nargs="?", default="rbee.>", help="subject to watch (default: rbee.>)")
    parser.add_argument("--server", default="nats://127.0.0.1:4222",
                        help="NATS server URL(s), comma separated (default: nats://127.0.0.1:4222)")
    args = parser.parse_args()

    nc = await nats.connect(servers=args.server.split(","), name="rbee-watch", max_reconnect_attempts=-1)

    async def on_message(msg) -> None:
        reply = f" (reply to {msg.reply})" if msg.reply else ""
        print(f"{msg.subject}{reply} {render(msg.data)}", flush=True)

    await nc.subscribe(args.subject, cb=on_message)
    print(f"watching {args.subject} on {nc.connected_url.geturl()}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
