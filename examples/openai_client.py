#!/usr/bin/env python3
"""Stream a chat completion from the queen's OpenAI-style API with the official OpenAI Python client.

    .venv/bin/python examples/openai_client.py "What is the capital of France?"
    .venv/bin/python examples/openai_client.py --no-stream --max-tokens 32 "Say hi"
    .venv/bin/python examples/openai_client.py --list-models
    RBEE_API_KEY=secret .venv/bin/python examples/openai_client.py --base-url http://10.0.0.5:7833/v1 "Hi"

The API key is RBEE_API_KEY (sent as `Authorization: Bearer ...`); without one a placeholder is sent,
which a queen started without RBEE_API_KEY ignores.
"""

import argparse
import os
import sys
import time

from openai import OpenAI, OpenAIError

DEFAULT_MODEL = "smollm2-135m-instruct"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--base-url", default=os.environ.get("RBEE_BASE_URL", "http://127.0.0.1:7833/v1"),
                        help="the queen's API (default: $RBEE_BASE_URL or http://127.0.0.1:7833/v1)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default: {DEFAULT_MODEL})")
    parser.add_argument("--system", help="a system message before the prompt")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-stream", action="store_true", help="one response instead of a stream")
    parser.add_argument("--list-models", action="store_true", help="list the models and exit")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("RBEE_API_KEY") or "no-key", max_retries=0)

    try:
        if args.list_models:
            for model in client.models.list():
                print(model.id)
            return 0

        messages = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": args.prompt})
        options = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                     ("seed", args.seed)) if v is not None}

        started = time.monotonic()
        if args.no_stream:
            response = client.chat.completions.create(model=args.model, messages=messages, **options)
            print(response.choices[0].message.content)
            finish_reason, usage = response.choices[0].finish_reason, response.usage
        else:
            stream = client.chat.completions.create(model=args.model, messages=messages, stream=True, **options)
            first_token_at = None
            finish_reason, usage = None, None
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                        print(choice.delta.content, end="", flush=True)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
            print()
            if first_token_at is not None:
                print(f"[first token after {(first_token_at - started) * 1000:.0f} ms]", file=sys.stderr)
    except OpenAIError as e:
        print(f"request failed: {e}", file=sys.stderr)
        return 1

    summary = f"[finish_reason {finish_reason}, {time.monotonic() - started:.2f} s"
    if usage is not None:
        summary += f", prompt {usage.prompt_tokens} tokens, completion {usage.completion_tokens} tokens"
    print(summary + "]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
