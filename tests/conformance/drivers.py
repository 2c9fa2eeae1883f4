"""Send one case to one side and record what came back, as plain JSON-like data.

The official ``openai`` SDK sends every case it can, unmodified (``max_retries=0``: a retry would hide
a failure); an HTTP error is recorded from the SDK's ``APIStatusError`` (status and the full body it
read), a client timeout as the status ``"timeout"``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from tests.conformance.cases import Case
from tests.conformance.servers import Side

Status = int | str  # an HTTP status, or "timeout" / "stream-error"


@dataclass
class Outcome:
    status: Status
    # The JSON answer: a dict, or for a stream the list of its chunks (without the final [DONE]).
    body: Any
    text: str = ""  # the raw body, for failure messages

    @property
    def ok(self) -> bool:
        return self.status == 200


def client(base_url: str, timeout_s: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s)


def _create(case: Case, base_url: str) -> Any:
    sdk = client(f"{base_url}/v1", case.timeout_s)
    body = copy.deepcopy(case.body)
    assert isinstance(body, dict)
    if case.api == "chat":
        return sdk.chat.completions.create(**body, stream=case.stream)
    if case.api == "completions":
        return sdk.completions.create(**body, stream=case.stream)
    return sdk.embeddings.create(**body)


def _sdk_call(case: Case, base_url: str) -> Outcome:
    if case.api == "post":
        # The root URL: vLLM's /tokenize and /detokenize have no /v1 prefix; /v1/... paths spell it out.
        answer = client(base_url, case.timeout_s).post(case.path, body=copy.deepcopy(case.body), cast_to=object)
        return Outcome(200, answer, json.dumps(answer))
    answer = _create(case, base_url)
    if not case.stream:
        return Outcome(200, answer.to_dict(), answer.to_json())
    with answer as stream:
        chunks = [chunk.to_dict() for chunk in stream]
    return Outcome(200, chunks, json.dumps(chunks))


def _raw_call(case: Case, base_url: str) -> Outcome:
    assert isinstance(case.body, bytes)
    resp = httpx.request(
        case.method,
        f"{base_url}{case.path}",
        content=case.body,
        headers={"content-type": "application/json"},
        timeout=case.timeout_s,
    )
    try:
        body = resp.json()
    except ValueError:
        body = None
    return Outcome(resp.status_code, body, resp.text)


def send(case: Case, side: Side) -> Outcome:
    base_url = side.url(case.server)
    try:
        if case.api == "raw":
            return _raw_call(case, base_url)
        return _sdk_call(case, base_url)
    except openai.APIStatusError as err:
        try:
            body = err.response.json()
        except ValueError:
            body = None
        return Outcome(err.status_code, body, err.response.text)
    except (openai.APITimeoutError, httpx.TimeoutException):
        return Outcome("timeout", None, f"no answer within {case.timeout_s:g} s")
    except openai.APIError as err:
        # An error event inside a stream that had started with 200.
        return Outcome("stream-error", err.body, str(err))
