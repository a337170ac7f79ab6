"""Schemathesis hooks for the orders API.

A real client sends a new Idempotency-Key per logical request and repeats it only
when it retries that same request. Generated cases reuse short keys ("0", "a") for
different bodies, which the API rightly refuses with 422; give each generated case
with a key a key of its own (the key's format is still exercised: the hook keeps
the generated prefix).
"""

import uuid

import schemathesis


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = f"{headers[name][:200]}-{uuid.uuid4().hex}"
