#!/usr/bin/env python3
"""What an Ollama app asks of its server, asked with the official `ollama` Python client of a running
rbee queen: list the models, stream a chat, a whole chat with options, generate (with a system prompt,
and held to JSON by `format`), embed, the loaded models, a model's details, and refusals of what rbee
does not support, in Ollama's error shape. Run by `ollama_client.rs` against a real cluster; by hand:

    .venv/bin/python queen/tests/ollama_client.py http://127.0.0.1:7833 smollm2-135m-instruct

Prints one line per check and exits non-zero on the first failure.
"""

import json
import sys

import ollama


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))
    if not ok:
        sys.exit(1)


def refused(call, status, needle):
    try:
        call()
    except ollama.ResponseError as e:
        return e.status_code == status and needle in str(e.error), f"{e.status_code} {e.error}"
    return False, "not refused"


def main():
    host, model = sys.argv[1], sys.argv[2]
    client = ollama.Client(host=host)

    listed = [m.model for m in client.list().models]
    check("list names the model", model in listed, str(listed))

    parts = list(client.chat(model=model, messages=[{"role": "user", "content": "Name a color."}],
                             stream=True, options={"temperature": 0, "num_predict": 12}))
    text = "".join(p.message.content or "" for p in parts)
    last = parts[-1]
    check("chat streams lines, then one done", len(parts) >= 2 and last.done and not any(p.done for p in parts[:-1]),
          f"{len(parts)} lines")
    check("the streamed chat has text", len(text.strip()) > 0, repr(text))
    check("the last line counts tokens", (last.eval_count or 0) >= 1 and (last.prompt_eval_count or 0) > 0
          and last.done_reason in ("stop", "length"), f"{last.eval_count} {last.prompt_eval_count} {last.done_reason}")

    whole = client.chat(model=model, messages=[{"role": "user", "content": "Name a color."}],
                        options={"temperature": 0, "num_predict": 12})
    check("a whole chat equals the streamed one at temperature 0", whole.message.content == text,
          f"{whole.message.content!r} vs {text!r}")
    check("num_predict bounds the answer", (whole.eval_count or 0) <= 12, str(whole.eval_count))

    gen = client.generate(model=model, prompt="Say hi.", system="You are terse.", options={"num_predict": 8})
    check("generate answers", gen.done and len(gen.response) > 0, repr(gen.response))

    js = client.generate(model=model, prompt="Give a JSON object with a key name.", format="json",
                         options={"temperature": 0, "num_predict": 40})
    try:
        parsed = json.loads(js.response)
        check("format json gives JSON", isinstance(parsed, dict) or js.done_reason == "length", js.response)
    except ValueError:
        check("format json gives JSON", js.done_reason == "length", js.response)

    emb = client.embed(model=model, input=["a cat", "a dog"])
    check("embed returns one vector per input", len(emb.embeddings) == 2
          and len(emb.embeddings[0]) == len(emb.embeddings[1]) > 0, str(len(emb.embeddings)))

    loaded = [m.model for m in client.ps().models]
    check("ps lists the loaded model", model in loaded, str(loaded))

    shown = client.show(model)
    check("show gives the model's details", shown.details is not None and shown.details.format == "gguf",
          str(shown.details))

    ok, why = refused(lambda: client.chat(model=model, messages=[{"role": "user", "content": "x"}],
                                          options={"mirostat": 2}), 400, "mirostat")
    check("an unsupported option is refused by name", ok, why)
    kept = client.chat(model=model, messages=[{"role": "user", "content": "x"}], keep_alive="10m",
                       options={"num_predict": 1})
    check("keep_alive is taken", kept.done, str(kept))
    ok, why = refused(lambda: client.chat(model=model, messages=[{"role": "user", "content": "x"}],
                                          keep_alive="soon"), 400, "keep_alive")
    check("a keep_alive that is no duration is refused by name", ok, why)
    ok, why = refused(lambda: client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}]),
                      404, "no-such-model")
    check("an unknown model is a 404", ok, why)
    print("all ollama client checks passed")


if __name__ == "__main__":
    main()
