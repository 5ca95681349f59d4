#!/usr/bin/env python3
"""Checks an OpenAI-compatible server (ferrollama serve) with the official `openai` client.

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=KEY python3 tests/openai/test_openai_client.py [NAME...]

NAME picks the checks whose name contains it (default: all). With
FERROLLAMA_EXPECT_AUTH=1 (set by scripts/test-openai-client.sh, which starts the server
with --api-key) a client with a wrong key must get AuthenticationError. Prints one line
per check and closes with 'N passed, N failed'; exits 1 if any failed.
`scripts/test-openai-client.sh` makes the venv (tests/openai/requirements.txt), starts the
server and runs this.
"""

import math
import os
import sys
import time
import traceback

import openai

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("OPENAI_API_KEY", "none")
EXPECT_AUTH = os.environ.get("FERROLLAMA_EXPECT_AUTH", "") not in ("", "0")

# No retries: a 5xx or a dropped connection must show, not be papered over.
client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)
MODEL = None  # set by test_models_list, which runs first

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}]


def model():
    global MODEL
    if MODEL is None:
        MODEL = list(client.models.list())[0].id
    return MODEL


def check_usage(usage, what, max_completion=None):
    assert usage is not None, f"{what}: no usage in the response"
    assert isinstance(usage.prompt_tokens, int) and usage.prompt_tokens > 0, f"{what}: usage.prompt_tokens={usage.prompt_tokens!r}, want a positive int"
    assert isinstance(usage.completion_tokens, int) and usage.completion_tokens > 0, f"{what}: usage.completion_tokens={usage.completion_tokens!r}, want a positive int"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, (
        f"{what}: usage.total_tokens={usage.total_tokens} != prompt_tokens {usage.prompt_tokens} + completion_tokens {usage.completion_tokens}")
    if max_completion is not None:
        assert usage.completion_tokens <= max_completion, f"{what}: completion_tokens={usage.completion_tokens} > max_tokens {max_completion}"


def check_finish(finish_reason, completion_tokens, max_tokens, what):
    assert finish_reason in ("stop", "length"), f"{what}: finish_reason={finish_reason!r}, want 'stop' or 'length'"
    if finish_reason == "length":
        assert completion_tokens == max_tokens, f"{what}: finish_reason 'length' but completion_tokens={completion_tokens}, max_tokens={max_tokens}"
    if completion_tokens < max_tokens:
        assert finish_reason == "stop", f"{what}: {completion_tokens} < max_tokens {max_tokens} tokens but finish_reason={finish_reason!r}"


def chat(messages=HELLO, **kw):
    kw.setdefault("max_tokens", 32)
    return client.chat.completions.create(model=model(), messages=messages, **kw)


def stream_chat(messages=HELLO, **kw):
    kw.setdefault("max_tokens", 32)
    chunks = list(client.chat.completions.create(model=model(), messages=messages, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


# ---------------------------------------------------------------- checks


def test_models_list():
    models = list(client.models.list())
    assert len(models) == 1, f"models.list() gave {len(models)} models, want 1: {models!r}"
    m = models[0]
    assert isinstance(m.id, str) and m.id, f"model id {m.id!r} is not a non-empty string"
    assert m.object == "model", f"model object={m.object!r}, want 'model'"
    global MODEL
    MODEL = m.id
    # A model fetched by id (GET /v1/models/{id}) is optional in OpenAI-compatible servers; not checked.


def test_chat_basic():
    r = chat(temperature=0)
    assert isinstance(r.id, str) and r.id, f"response id={r.id!r}"
    assert r.object == "chat.completion", f"object={r.object!r}, want 'chat.completion'"
    assert isinstance(r.created, int) and r.created > 1_600_000_000, f"created={r.created!r}, want a Unix time"
    assert isinstance(r.model, str) and r.model, f"model={r.model!r}"
    assert len(r.choices) == 1, f"{len(r.choices)} choices, want 1"
    c = r.choices[0]
    assert c.index == 0, f"choice index={c.index!r}"
    assert c.message.role == "assistant", f"message.role={c.message.role!r}, want 'assistant'"
    assert isinstance(c.message.content, str) and c.message.content.strip(), f"content={c.message.content!r}, want a non-empty string"
    check_usage(r.usage, "chat", max_completion=32)
    check_finish(c.finish_reason, r.usage.completion_tokens, 32, "chat")


def test_chat_max_tokens_5():
    r = chat(STORY, max_tokens=5, temperature=0)
    c = r.choices[0]
    check_usage(r.usage, "chat max_tokens=5", max_completion=5)
    check_finish(c.finish_reason, r.usage.completion_tokens, 5, "chat max_tokens=5")
    assert c.finish_reason == "length", f"a long story cut at 5 tokens: finish_reason={c.finish_reason!r} after {r.usage.completion_tokens} tokens ({c.message.content!r})"


def test_chat_max_completion_tokens():
    # Newer clients send max_completion_tokens instead of the deprecated max_tokens.
    r = client.chat.completions.create(model=model(), messages=STORY, max_completion_tokens=5, temperature=0)
    check_usage(r.usage, "chat max_completion_tokens=5", max_completion=5)


def test_chat_extra_sampling_params():
    # llama.cpp-style extras through extra_body: top_k=1 makes any temperature greedy.
    greedy = chat(STORY, max_tokens=16, temperature=0).choices[0].message.content
    r = chat(STORY, max_tokens=16, temperature=0.8, seed=7,
             extra_body={"top_k": 1, "min_p": 0.05, "repeat_penalty": 1.0})
    assert r.choices[0].message.content == greedy, f"top_k=1 at temperature 0.8 gave {r.choices[0].message.content!r}, greedy gave {greedy!r}"
    r = chat(STORY, max_tokens=16, temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5)
    assert r.choices[0].message.content, "penalties and top_p: empty content"


def test_chat_stop_string():
    r = chat(STORY, max_tokens=64, temperature=0, stop=[".", "\n"])
    text = r.choices[0].message.content
    assert "." not in text and "\n" not in text, f"stop ['.', '\\n'] but the content holds one: {text!r}"
    assert r.choices[0].finish_reason in ("stop", "length"), f"finish_reason={r.choices[0].finish_reason!r}"


def test_chat_stream():
    chunks, text = stream_chat(STORY, max_tokens=24, temperature=0)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3, f"{len(content_chunks)} chunks with content for 24 tokens, want several (chunks: {chunks!r})"
    assert text.strip(), "streamed text is empty"
    for c in chunks:
        assert c.object == "chat.completion.chunk", f"chunk object={c.object!r}, want 'chat.completion.chunk'"
        assert c.id == chunks[0].id, f"chunk ids differ: {c.id!r} vs {chunks[0].id!r}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, f"want exactly one chunk with a finish_reason, got {finishes!r}"
    assert finishes[0] in ("stop", "length"), f"finish_reason={finishes[0]!r}"
    assert all(c.usage is None for c in chunks), "usage chunk sent without stream_options.include_usage"
    # Greedy: the stream must carry the same text as the non-streaming answer.
    r = chat(STORY, max_tokens=24, temperature=0)
    assert text == r.choices[0].message.content, f"greedy stream {text!r} != non-streaming {r.choices[0].message.content!r}"


def test_chat_stream_include_usage():
    chunks, text = stream_chat(STORY, max_tokens=16, temperature=0, stream_options={"include_usage": True})
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1, f"{len(usage_chunks)} chunks with usage, want 1"
    last = chunks[-1]
    assert last.usage is not None, "the usage chunk is not the last one"
    assert last.choices == [], f"usage chunk has choices {last.choices!r}, want []"
    check_usage(last.usage, "stream usage", max_completion=16)
    assert text.strip(), "streamed text is empty"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    check_finish(finish, last.usage.completion_tokens, 16, "stream usage")


def test_seed_reproducible():
    kw = dict(max_tokens=24, temperature=0.8, seed=1234)
    msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
    # The first run computes the prompt, the second reads it back from the prefix cache: the
    # server must give the same text either way.
    a = chat(msgs, **kw).choices[0].message.content
    b = chat(msgs, **kw).choices[0].message.content
    assert a == b, f"same seed 1234, temperature 0.8, different text:\n  {a!r}\n  {b!r}"
    others = {chat(msgs, **dict(kw, seed=s)).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, f"seeds 1, 2, 3 and 1234 at temperature 0.8 all gave the same text {a!r}: is the seed used?"
    g1 = chat(msgs, max_tokens=24, temperature=0).choices[0].message.content
    g2 = chat(msgs, max_tokens=24, temperature=0).choices[0].message.content
    assert g1 == g2, f"temperature 0, different text:\n  {g1!r}\n  {g2!r}"


def test_seed_reproducible_stream():
    kw = dict(max_tokens=24, temperature=0.8, seed=99)
    _, a = stream_chat(STORY, **kw)
    b = chat(STORY, **kw).choices[0].message.content
    assert a == b, f"seed 99: streamed {a!r} != non-streaming {b!r}"


def test_completions_string():
    r = client.completions.create(model=model(), prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.object == "text_completion", f"object={r.object!r}, want 'text_completion'"
    assert len(r.choices) == 1, f"{len(r.choices)} choices, want 1"
    c = r.choices[0]
    assert isinstance(c.text, str) and c.text, f"text={c.text!r}"
    check_usage(r.usage, "completions", max_completion=12)
    check_finish(c.finish_reason, r.usage.completion_tokens, 12, "completions")


def test_completions_list():
    prompts = ["Once upon a time", "The three primary colors are"]
    r = client.completions.create(model=model(), prompt=prompts, max_tokens=8, temperature=0)
    assert len(r.choices) == 2, f"{len(r.choices)} choices for 2 prompts, want 2"
    assert sorted(c.index for c in r.choices) == [0, 1], f"choice indices {[c.index for c in r.choices]}"
    by_index = {c.index: c.text for c in r.choices}
    assert all(isinstance(t, str) and t for t in by_index.values()), f"texts {by_index!r}"
    # Each prompt alone starts the same greedy text as in the list, in the same slot (only the
    # start: batched arithmetic may flip a later near tie).
    for i, p in enumerate(prompts):
        alone = client.completions.create(model=model(), prompt=p, max_tokens=8, temperature=0).choices[0].text
        assert alone[:3] == by_index[i][:3], f"prompt {i} {p!r}: alone {alone!r}, in the list {by_index[i]!r}"
    check_usage(r.usage, "completions list", max_completion=16)


def test_completions_logprobs():
    r = client.completions.create(model=model(), prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp is not None, "logprobs=2 but choice.logprobs is missing"
    n = r.usage.completion_tokens
    assert isinstance(lp.tokens, list) and isinstance(lp.token_logprobs, list), f"logprobs lacks the tokens / token_logprobs lists: {lp!r}"
    assert len(lp.tokens) == len(lp.token_logprobs) == n, f"{len(lp.tokens)} tokens, {len(lp.token_logprobs)} token_logprobs, {n} completion tokens"
    assert "".join(lp.tokens) == r.choices[0].text, f"tokens {lp.tokens!r} do not join to the text {r.choices[0].text!r}"
    assert all(x <= 0 for x in lp.token_logprobs), f"token_logprobs {lp.token_logprobs!r}: a log probability above 0"
    assert lp.top_logprobs is not None and len(lp.top_logprobs) == n, f"top_logprobs {lp.top_logprobs!r}"
    for t in lp.top_logprobs:
        assert len(t) == 2, f"logprobs=2 but a top_logprobs entry has {len(t)}: {t!r}"


def test_chat_n2():
    r = chat([{"role": "user", "content": "Name a fruit."}], max_tokens=12, temperature=0.9, n=2)
    assert len(r.choices) == 2, f"n=2 gave {len(r.choices)} choices"
    assert sorted(c.index for c in r.choices) == [0, 1], f"choice indices {[c.index for c in r.choices]}"
    for c in r.choices:
        assert isinstance(c.message.content, str) and c.message.content, f"choice {c.index} content={c.message.content!r}"
        assert c.finish_reason in ("stop", "length"), f"choice {c.index} finish_reason={c.finish_reason!r}"
    assert r.usage.completion_tokens <= 24, f"n=2, max_tokens=12: completion_tokens={r.usage.completion_tokens}"


def test_chat_logprobs():
    r = chat(STORY, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content, f"logprobs=True but choice.logprobs={lp!r}"
    assert len(lp.content) == r.usage.completion_tokens, f"{len(lp.content)} logprob entries, {r.usage.completion_tokens} completion tokens"
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content, (
        f"logprob tokens {[t.token for t in lp.content]!r} do not join to the content {r.choices[0].message.content!r}")
    for t in lp.content:
        assert isinstance(t.token, str), f"token {t.token!r}"
        assert t.logprob <= 0, f"token {t.token!r} logprob {t.logprob} > 0"
        assert len(t.top_logprobs) == 3, f"token {t.token!r}: {len(t.top_logprobs)} top_logprobs, want 3"
        tops = [x.logprob for x in t.top_logprobs]
        assert all(x <= 0 for x in tops), f"token {t.token!r}: top logprobs {tops}"
        assert tops == sorted(tops, reverse=True), f"token {t.token!r}: top logprobs not in descending order {tops}"
        # Greedy: the chosen token is the most likely one.
        assert t.logprob >= tops[0] - 1e-3, f"greedy token {t.token!r} logprob {t.logprob} < top {t.top_logprobs[0].token!r} {tops[0]}"


def test_chat_logprobs_stream():
    chunks, text = stream_chat(STORY, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    entries = [t for c in chunks if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content for t in c.choices[0].logprobs.content]
    assert entries, "streaming with logprobs=True: no chunk carries logprobs.content"
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in entries), f"stream logprobs {entries!r}"


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


SENTENCES = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue grew by 4 percent."]


def test_embeddings():
    one = client.embeddings.create(model=model(), input=SENTENCES[0])  # the client asks for base64
    assert len(one.data) == 1, f"one string: {len(one.data)} embeddings"
    v = one.data[0].embedding
    assert isinstance(v, list) and len(v) > 0 and all(isinstance(x, float) for x in v), f"embedding {str(v)[:200]}"
    assert all(math.isfinite(x) for x in v), "embedding has a NaN or infinity"
    assert abs(norm(v) - 1) < 1e-3, f"L2 norm {norm(v)}, want 1"
    assert one.usage is not None and one.usage.prompt_tokens > 0, f"usage {one.usage!r}"

    b64 = client.embeddings.create(model=model(), input=SENTENCES)
    flt = client.embeddings.create(model=model(), input=SENTENCES, encoding_format="float")
    for name, r in (("base64", b64), ("float", flt)):
        assert len(r.data) == 3, f"{name}: {len(r.data)} embeddings for 3 inputs"
        assert [d.index for d in r.data] == [0, 1, 2], f"{name}: indices {[d.index for d in r.data]}"
        for d in r.data:
            assert len(d.embedding) == len(v), f"{name}: dimension {len(d.embedding)} != {len(v)}"
            assert abs(norm(d.embedding) - 1) < 1e-3, f"{name}: input {d.index} L2 norm {norm(d.embedding)}"
    for i in range(3):
        diff = max(abs(x - y) for x, y in zip(b64.data[i].embedding, flt.data[i].embedding))
        assert diff < 1e-5, f"input {i}: base64 and float embeddings differ by {diff}"
    diff = max(abs(x - y) for x, y in zip(v, flt.data[0].embedding))
    assert diff < 1e-4, f"the same sentence alone and in a list: embeddings differ by {diff}"
    a, b, c = (d.embedding for d in flt.data)
    sim, far1, far2 = cosine(a, b), cosine(a, c), cosine(b, c)
    assert sim > far1 and sim > far2, (
        f"cos(cat, cat)={sim:.4f} should exceed cos(cat, revenue)={far1:.4f} and cos(cat2, revenue)={far2:.4f}")


def expect_error(cls, call, what):
    try:
        r = call()
    except cls as e:
        body = e.body if isinstance(e.body, dict) else {}
        assert isinstance(body.get("message"), str) and body["message"], f"{what}: error body without a message: {e.body!r}"
        assert "type" in body, f"{what}: error body without a type: {e.body!r}"
        return e
    except openai.APIStatusError as e:
        raise AssertionError(f"{what}: want {cls.__name__}, got {type(e).__name__} (HTTP {e.status_code}): {e.response.text[:500]!r}")
    raise AssertionError(f"{what}: want {cls.__name__}, the request succeeded: {str(r)[:300]}")


def test_error_prompt_too_long():
    long_text = "hello " * 20000  # ~20k tokens, beyond the context
    expect_error(openai.BadRequestError, lambda: chat([{"role": "user", "content": long_text}], max_tokens=4), "chat, prompt longer than the context")
    expect_error(openai.BadRequestError, lambda: client.completions.create(model=model(), prompt=long_text, max_tokens=4), "completions, prompt longer than the context")
    # The server still answers afterwards.
    assert chat(max_tokens=4).choices[0].message.content is not None


def test_error_bad_messages():
    expect_error(openai.BadRequestError, lambda: client.chat.completions.create(model=model(), messages="hello", max_tokens=4), "messages as a string")
    expect_error(openai.BadRequestError, lambda: client.chat.completions.create(model=model(), messages=[{"role": "user", "content": 42}], max_tokens=4), "content as a number")
    expect_error(openai.BadRequestError, lambda: client.chat.completions.create(model=model(), messages=[{"content": "hi"}], max_tokens=4), "message without a role")
    expect_error(openai.BadRequestError, lambda: client.chat.completions.create(model=model(), messages=HELLO, max_tokens="four"), "max_tokens as a string")


def test_auth():
    if not EXPECT_AUTH:
        print("    (skipped: FERROLLAMA_EXPECT_AUTH not set)")
        return
    bad = openai.OpenAI(base_url=BASE_URL, api_key="wrong-" + API_KEY, max_retries=0, timeout=60)
    expect_error(openai.AuthenticationError, lambda: list(bad.models.list()), "models.list with a wrong key")
    expect_error(openai.AuthenticationError, lambda: bad.chat.completions.create(model=model(), messages=HELLO, max_tokens=4), "chat with a wrong key")
    expect_error(openai.AuthenticationError, lambda: bad.embeddings.create(model=model(), input="x"), "embeddings with a wrong key")


TESTS = [(name[5:], fn) for name, fn in list(globals().items()) if name.startswith("test_") and callable(fn)]


def main():
    picks = sys.argv[1:]
    passed = failed = 0
    print(f"openai {openai.__version__} against {BASE_URL}")
    for name, fn in TESTS:
        if picks and not any(p in name for p in picks):
            continue
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a check fails on anything it raises
            failed += 1
            detail = str(e) if isinstance(e, AssertionError) else "".join(traceback.format_exception(e)).rstrip()
            print(f"FAIL {name} ({time.perf_counter() - t:.1f} s): {detail}")
        else:
            passed += 1
            print(f"ok   {name} ({time.perf_counter() - t:.1f} s)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
