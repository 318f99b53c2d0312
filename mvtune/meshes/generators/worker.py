"""A generator worker process: loads one backend once, then makes items on request.

Protocol (JSON lines): the worker prints ``{"ready": true}`` (or ``{"ready": false, "error": ...}``) once the
backend is loaded, then answers each request line ``{"id", "row", "seed", "out"}`` with ``{"id", "ok": true,
"caption", "provenance"}`` or ``{"id", "ok": false, "error"}``. The protocol uses a private copy of stdout; the
real stdout is pointed at stderr first, so whatever a model library prints cannot corrupt a reply.

Run as ``python -m mvtune.meshes.generators.worker BACKEND OPTIONS_JSON DEVICE``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def serve(backend_name: str, options_json: str, device: str) -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    from mvtune.meshes.generators import get_backend
    from mvtune.meshes.generators.base import GeneratorError

    try:
        backend = get_backend(backend_name)
        runner = backend.load(backend.Options.model_validate_json(options_json), device)
    except GeneratorError as exc:
        reply({"ready": False, "error": str(exc)})
        return 3
    except Exception as exc:  # a backend that fails to load for a reason it did not foresee
        traceback.print_exc()
        reply({"ready": False, "error": f"{backend_name} failed to load: {type(exc).__name__}: {exc}"})
        return 3
    reply({"ready": True, "pid": os.getpid(), "device": device})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            result = runner.generate(request["row"], int(request["seed"]), Path(request["out"]))
            reply({"id": request["id"], "ok": True, **result})
        except GeneratorError as exc:  # the backend's own, already clear refusal
            reply({"id": request["id"], "ok": False, "error": str(exc)})
        except Exception as exc:  # one failing item must not end the worker
            traceback.print_exc()
            reply({"id": request["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(serve(*sys.argv[1:4]))
