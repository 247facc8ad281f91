#!/usr/bin/env python3
"""What an agent framework or RAG pipeline asks of an OpenAI endpoint, asked with the official `openai`
SDK of a running rbee queen: tool calls (named, required, streamed, a follow-up turn with the tool's
answer), structured outputs (`json_object`, `json_schema` through `parse()` with a pydantic model),
`n` choices, `logprobs`, embeddings (base64 and float), and refusals of what rbee does not support. Run by `openai_sdk.rs` against a
real cluster; by hand:

    .venv/bin/python queen/tests/openai_sdk.py http://127.0.0.1:7833/v1 smollm2-135m-instruct

Prints one line per check and exits non-zero on the first failure.
"""

import json
import math
import sys

import openai
import pydantic
from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAIL'}: {name}{': ' + str(detail) if detail else ''}", flush=True)
    if not ok:
        sys.exit(1)


def weather_args_valid(arguments):
    args = json.loads(arguments)
    return isinstance(args.get("city"), str) and args.get("unit") in ("celsius", "fahrenheit") and set(args) <= {"city", "unit"}


def main():
    base, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    common = {"model": model, "temperature": 0, "max_tokens": 96}

    # A named function: the reply is a call of it, and its arguments validate.
    r = client.chat.completions.create(
        messages=ASK, tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}}, **common
    )
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    check("named function: one call of get_weather", len(calls) == 1 and calls[0].function.name == "get_weather", calls)
    check("named function: arguments validate", weather_args_valid(calls[0].function.arguments), calls[0].function.arguments)
    check("named function: finish_reason tool_calls", choice.finish_reason == "tool_calls", choice.finish_reason)
    check("named function: call id", calls[0].id.startswith("call_") and calls[0].type == "function", calls[0].id)
    first_call = calls[0]

    # required: some call of the given tools, arguments valid for the tool chosen.
    r = client.chat.completions.create(messages=ASK, tools=[WEATHER], tool_choice="required", **common)
    calls = r.choices[0].message.tool_calls or []
    check("required: at least one call", len(calls) >= 1, r.choices[0].message)
    check("required: arguments validate", all(weather_args_valid(c.function.arguments) for c in calls), calls)

    # Streamed: the SDK's delta.tool_calls chunks reassemble into the same kind of call.
    stream = client.chat.completions.create(
        messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True, **common
    )
    assembled, finish, text = {}, None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            slot = assembled.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            if tc.function:
                slot["name"] += tc.function.name or ""
                slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    check("stream: one reassembled call", len(assembled) == 1 and assembled[0]["name"] == "get_weather", assembled)
    check("stream: reassembled arguments validate", weather_args_valid(assembled[0]["arguments"]), assembled)
    check("stream: finish_reason tool_calls, no call text", finish == "tool_calls" and "<tool_call>" not in text, (finish, text))

    # The conversation goes on with the tool's answer.
    follow = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [first_call.model_dump()]},
        {"role": "tool", "tool_call_id": first_call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
    ]
    r = client.chat.completions.create(messages=follow, tools=[WEATHER], tool_choice="none", **common)
    reply = r.choices[0].message.content or ""
    check("follow-up with role tool: a text answer", len(reply.strip()) > 0 and not r.choices[0].message.tool_calls, reply)
    check("follow-up: the tool turn reached the prompt", r.usage.prompt_tokens > 60, r.usage)

    # json_object: the reply parses as a JSON object.
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and age, for a cat named Felix aged 3."}],
        response_format={"type": "json_object"}, **common | {"max_tokens": 160},
    )
    content = r.choices[0].message.content
    try:
        parsed = json.loads(content)
    except ValueError:
        parsed = None
    check("json_object: the reply ended by itself", r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)
    check("json_object: parses as an object", isinstance(parsed, dict), content)

    # parse() with a pydantic model: json_schema with strict, the object comes back parsed.
    class City(pydantic.BaseModel):
        name: str
        country: str
        population: int

    class Answer(pydantic.BaseModel):
        city: City
        tags: list[str] = pydantic.Field(max_length=3)

    r = client.chat.completions.parse(
        messages=[{"role": "user", "content": "Describe Paris as JSON: the city (name, country, population) and up to three tags."}],
        response_format=Answer, **common | {"max_tokens": 200}
    )
    got = r.choices[0].message.parsed
    check("parse(): a parsed pydantic object", isinstance(got, Answer) and isinstance(got.city.population, int), got)

    # n: several choices, one index each.
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "Say a word."}], n=3, model=model, temperature=1.0, seed=5, max_tokens=8
    )
    check("n=3: three choices", sorted(c.index for c in r.choices) == [0, 1, 2], [c.index for c in r.choices])
    check("n=3: completion tokens summed", r.usage.completion_tokens >= 3, r.usage)

    # logprobs: one entry per token, probabilities in (0, 1], top alternatives sorted.
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "What is the capital of France?"}], logprobs=True, top_logprobs=3, **common | {"max_tokens": 12}
    )
    entries = r.choices[0].logprobs.content
    check("logprobs: one per completion token", len(entries) == r.usage.completion_tokens, (len(entries), r.usage))
    check("logprobs: log probabilities <= 0", all(e.logprob <= 1e-6 and math.isfinite(e.logprob) for e in entries))
    check("logprobs: top 3, most likely first", all(
        len(e.top_logprobs) == 3 and [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        for e in entries))
    check("logprobs: greedy picks the most likely", all(abs(e.logprob - e.top_logprobs[0].logprob) < 1e-4 for e in entries))

    # What rbee does not take is refused by name, not dropped.
    for extra, param in [({"audio": {"voice": "alloy"}}, "audio"), ({"functions": [WEATHER["function"]]}, "functions"), ({"n": 99}, "n")]:
        try:
            client.chat.completions.create(messages=ASK, **common, extra_body=extra) if param != "n" else \
                client.chat.completions.create(messages=ASK, n=99, model=model)
            check(f"refused: {param}", False, "accepted")
        except openai.BadRequestError as e:
            check(f"refused: {param} (400 naming it)", param in str(e), e)
    # Embeddings: several inputs, one dimension; the same text twice gives cosine 1.0; a paraphrase
    # nearer than an unrelated sentence. The SDK asks for base64 by default; float is asked too.
    texts = [
        "The cat sat on the mat.",
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "Quarterly revenue of the bank fell by four percent.",
    ]
    r = client.embeddings.create(model=model, input=texts)
    vectors = [d.embedding for d in r.data]
    check("embeddings: one vector per input, in order", [d.index for d in r.data] == [0, 1, 2, 3], [d.index for d in r.data])
    dims = {len(v) for v in vectors}
    check("embeddings: one dimension", len(dims) == 1 and dims.pop() > 0, {len(v) for v in vectors})

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    same, near, far = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2]), cosine(vectors[0], vectors[3])
    check("embeddings: the same text twice gives cosine 1.0", abs(same - 1.0) < 1e-4, same)
    check("embeddings: a paraphrase is nearer than an unrelated sentence", near > far, (near, far))
    check("embeddings: usage counted", r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens, r.usage)
    f = client.embeddings.create(model=model, input="The cat sat on the mat.", encoding_format="float")
    check("embeddings: float and base64 agree", abs(cosine(f.data[0].embedding, vectors[0]) - 1.0) < 1e-4, f.data[0].embedding[:4])
    for extra, param in [({"dimensions": 7}, "dimensions"), ({"encoding_format": "int8"}, "encoding_format")]:
        try:
            client.embeddings.create(model=model, input="x", **extra)
            check(f"embeddings refused: {param}", False, "accepted")
        except openai.BadRequestError as e:
            check(f"embeddings refused: {param} (400 naming it)", param in str(e), e)
    print("all openai sdk checks passed")


if __name__ == "__main__":
    main()
