"""Every bad input gets the right 4xx with a short JSON error, never a 5xx, and the server keeps serving."""
from __future__ import annotations

import json
import random

import pytest

JSON = {"content-type": "application/json"}
CASES = [  # (id, method, path, raw body or None, headers, expected status)
    ("malformed-json", "POST", "/v1/embeddings", b'{"input": "x"', JSON, 400),
    ("not-json-at-all", "POST", "/v1/embeddings", b"hello", {}, 400),
    ("non-utf8", "POST", "/v1/embeddings", b'{"input": "\xff\xfe"}', JSON, 400),
    ("empty-body", "POST", "/v1/embeddings", b"", JSON, 422),
    ("json-array", "POST", "/v1/embeddings", b"[1, 2]", JSON, 422),
    ("missing-input", "POST", "/v1/embeddings", b'{"model": "m"}', JSON, 422),
    ("input-int", "POST", "/v1/embeddings", b'{"input": 5}', JSON, 422),
    ("input-null", "POST", "/v1/embeddings", b'{"input": null}', JSON, 422),
    ("input-list-of-ints", "POST", "/v1/embeddings", b'{"input": [1, 2]}', JSON, 422),
    ("input-nested", "POST", "/v1/classify", b'{"input": [["a"]]}', JSON, 422),
    ("lone-surrogate", "POST", "/v1/embeddings", b'{"input": "\\ud800"}', JSON, 422),
    ("empty-list", "POST", "/v1/embeddings", b'{"input": []}', JSON, 422),
    ("empty-string", "POST", "/v1/classify", b'{"input": ""}', JSON, 422),
    ("bad-encoding-format", "POST", "/v1/embeddings", b'{"input": "x", "encoding_format": "int8"}', JSON, 422),
    ("10MB-body", "POST", "/v1/embeddings", b'{"input": "' + b"a" * (10 * 1024 * 1024) + b'"}', JSON, 413),
    ("100k-token-text", "POST", "/v1/embeddings", json.dumps({"input": "word " * 100_000}).encode(), JSON, 413),
    ("unknown-route", "POST", "/v1/nope", b"{}", JSON, 404),
    ("unknown-get", "GET", "/admin", None, {}, 404),
    ("wrong-method", "GET", "/v1/embeddings", None, {}, 405),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_the_right_4xx(srv, case):
    _, method, path, body, headers, expected = case

    async def go():
        async with srv.client(srv.engine(), max_body_bytes=1024 * 1024) as client:
            bad = await client.request(method, path, content=body, headers=headers)
            good = await client.post("/v1/embeddings", json={"input": "still serving"})
            return bad, good

    bad, good = srv.run(go())
    assert bad.status_code == expected, bad.text
    error = bad.json()["error"]
    assert error["code"] == expected and 0 < len(error["message"]) <= 500 and "Traceback" not in error["message"]
    assert good.status_code == 200


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null", "list", "dict", "unicode", "huge_int"]
    kind = rng.choice(kinds if depth < 3 else kinds[:5])
    if kind == "str":
        return "".join(rng.choice("ab \n\t\"\\{}[]é中\x00") for _ in range(rng.randint(0, 12)))
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        keys = ["input", "prompt", "model", "max_tokens", "temperature", "x"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return {"int": rng.randint(-5, 5), "float": rng.uniform(-1e9, 1e9), "bool": rng.random() < 0.5, "null": None,
            "unicode": "\ud83d\ude00 \u202e", "huge_int": 10 ** 40}[kind]


def _random_body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    fields = {"input": _random_value(rng), "prompt": _random_value(rng), "max_tokens": _random_value(rng),
              "temperature": _random_value(rng), "encoding_format": rng.choice(["float", "base64", 3, None])}
    body = {k: v for k, v in fields.items() if rng.random() < 0.7}
    text = json.dumps(body if roll < 0.9 else _random_value(rng))
    return text.encode() if rng.random() < 0.9 else text[: rng.randint(0, len(text))].encode()


def test_fuzzed_bodies_never_get_a_5xx(srv):
    rng = random.Random(1234)
    paths = ["/v1/embeddings", "/v1/classify", "/v1/completions"]

    async def go():
        async with srv.client(srv.engine(), max_texts=8, max_tokens=32) as client:
            statuses = []
            for _ in range(300):
                reply = await client.post(rng.choice(paths), content=_random_body(rng), headers=JSON)
                statuses.append(reply.status_code)
                assert "error" in reply.json() or reply.status_code == 200
            return statuses

    statuses = srv.run(go())
    assert max(statuses) < 500, sorted(set(statuses))
    assert {200, 400, 422} <= set(statuses)
