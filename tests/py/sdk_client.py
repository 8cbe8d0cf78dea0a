"""Drive the unmodified PyPI EZThrottle SDK (ezthrottle==1.3.0) against a
self-hosted ezthrottle, for tests/sdk_conformance.rs.

    sdk_client.py <control base url> <api key> <ops json>

<ops json> is a JSON list of operations, run in order; stdout gets one JSON
object {"sdk_version", "sdk_file", "results": [...]} with one result per
operation. Operations:

    {"op": "step", "step": STEP}          Step(client)...execute()
    {"op": "submit", "kwargs": {...}}     client.submit_job(**kwargs)
    {"op": "create_secret", "primary": S, "secondary": S?}
    {"op": "get_secret"}
    {"op": "rotate_secret", "new": S}
    {"op": "delete_secret"}
    {"op": "verify", "payload_file": P, "signature": H, "secret": S}
                                          webhook_utils.verify_webhook_signature

STEP is a JSON object whose keys are Step builder methods, applied in the
object's order: url, method, headers, body, metadata, webhooks,
webhook_quorum, regions, region_policy, execution_mode, retry_policy,
retry_at, idempotent_key take their value as is; "type" is a StepType name
("performance"/"frugal"), "idempotent_strategy" an IdempotentStrategy name
("hash"/"unique"); "fallbacks" is a list of {"step": STEP,
"trigger_on_error": [codes]?, "trigger_on_timeout": ms?}; "on_success" is a
STEP; "on_failure" is a STEP, with "on_failure_timeout_ms" next to it.

SDK errors (EZThrottleError, ValueError) are reported as {"error": "..."};
anything else is a crash with a traceback (exit 1). Exit 3: the SDK is not
importable from this interpreter.
"""

import json
import sys

try:
    import importlib.metadata as md

    import ezthrottle
    from ezthrottle import EZThrottle, EZThrottleError, IdempotentStrategy, Step, StepType
    from ezthrottle.webhook_utils import verify_webhook_signature
except ImportError as e:  # pragma: no cover - reported to the Rust side
    print(f"cannot import the ezthrottle SDK with {sys.executable}: {e}", file=sys.stderr)
    sys.exit(3)

PLAIN = {
    "url",
    "method",
    "headers",
    "body",
    "metadata",
    "webhooks",
    "webhook_quorum",
    "regions",
    "region_policy",
    "execution_mode",
    "retry_policy",
    "retry_at",
    "idempotent_key",
}


def build(desc, client=None):
    step = Step(client) if client is not None else Step()
    for key, value in desc.items():
        if key in PLAIN:
            getattr(step, key)(value)
        elif key == "type":
            step.type(StepType[value.upper()])
        elif key == "idempotent_strategy":
            step.idempotent_strategy(IdempotentStrategy[value.upper()])
        elif key == "fallbacks":
            for fb in value:
                step.fallback(
                    build(fb["step"]),
                    trigger_on_error=fb.get("trigger_on_error"),
                    trigger_on_timeout=fb.get("trigger_on_timeout"),
                )
        elif key == "on_success":
            step.on_success(build(value))
        elif key == "on_failure":
            step.on_failure(build(value), timeout_ms=desc.get("on_failure_timeout_ms"))
        elif key == "on_failure_timeout_ms":
            pass  # applied with on_failure
        else:
            raise SystemExit(f"sdk_client.py: unknown step key {key!r}")
    return step


def run(client, op):
    kind = op["op"]
    try:
        if kind == "step":
            return build(op["step"], client).execute()
        if kind == "submit":
            return client.submit_job(**op["kwargs"])
        if kind == "create_secret":
            return client.create_webhook_secret(op["primary"], op.get("secondary"))
        if kind == "get_secret":
            return client.get_webhook_secret()
        if kind == "rotate_secret":
            return client.rotate_webhook_secret(op["new"])
        if kind == "delete_secret":
            return client.delete_webhook_secret()
        if kind == "verify":
            with open(op["payload_file"], "rb") as f:
                payload = f.read()
            ok, reason = verify_webhook_signature(payload, op["signature"], op["secret"])
            return {"ok": ok, "reason": reason}
    except (EZThrottleError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    raise SystemExit(f"sdk_client.py: unknown op {kind!r}")


def main():
    base, api_key, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # Exactly how a user points the SDK at a self-hosted ezthrottle: both
    # URLs are the control port.
    client = EZThrottle(api_key, tracktags_url=base, ezthrottle_url=base)
    results = [run(client, op) for op in ops]
    print(
        json.dumps(
            {
                "sdk_version": md.version("ezthrottle"),
                "sdk_file": ezthrottle.__file__,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
