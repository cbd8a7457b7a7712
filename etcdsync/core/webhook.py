"""Push webhooks from GitHub and GitLab: authenticate the request, read which ref moved to which commit.

Why: a push should reach a `--git` daemon at once instead of at the next poll. This module is pure (no
I/O): the HTTP handler passes it the headers and the body and gets back a `Push`, None for another event
(GitHub's `ping`), or a WebhookError carrying the HTTP status to answer. A Push only triggers a fetch;
the SHA in it is a hint, what the fetch finds decides.

- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>`;
  event in `X-GitHub-Event` (`push`, `ping`); payload `ref`, `after`.
- GitLab: `X-Gitlab-Token: <the secret>`; event in `X-Gitlab-Event` (`Push Hook`, `Tag Push Hook`);
  payload `ref`, `checkout_sha` (the commit, also for annotated tags), else `after`.

Secrets are compared in constant time (`hmac.compare_digest`). A body over `MAX_BODY_BYTES` is refused
(413) before anything else is done with it; the push is then still found by the next poll.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import WebhookError

# 1 MiB, nginx's default client_max_body_size. GitHub lists every pushed commit with its changed files
# (payloads up to 25 MB), so a huge push may exceed it: it is then refused (413) and found by the next poll.
MAX_BODY_BYTES = 1024 * 1024
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZERO = re.compile(r"0{40}|0{64}")
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")


@dataclass(frozen=True, slots=True)
class Push:
    """A push to ``ref`` (a full ref name); ``sha`` is the new commit, None when the ref was deleted."""

    provider: str   # "github" | "gitlab"
    ref: str
    sha: str | None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    name = name.lower()
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify_github(body: bytes, signature: str | None, secret: bytes) -> None:
    """Check GitHub's `X-Hub-Signature-256` value against the HMAC-SHA256 of `body`; WebhookError (401)."""
    _check_secret(secret)
    m = _SIGNATURE.fullmatch((signature or "").strip())
    if m is None:
        raise WebhookError("webhook: missing or malformed X-Hub-Signature-256 (expected sha256=<64 hex digits>)", 401)
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m.group(1).lower()):
        raise WebhookError("webhook: X-Hub-Signature-256 does not match the body and the secret", 401)


def verify_gitlab(token: str | None, secret: bytes) -> None:
    """Check GitLab's `X-Gitlab-Token` value against the secret; WebhookError (401)."""
    _check_secret(secret)
    if token is None:
        raise WebhookError("webhook: missing X-Gitlab-Token", 401)
    if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), secret):
        raise WebhookError("webhook: X-Gitlab-Token does not match the secret", 401)


def _check_secret(secret: bytes) -> None:
    if not secret:
        raise ValueError("webhook secret is empty")


def parse_push(provider: str, body: bytes) -> Push:
    """The ref and new commit of a push payload (JSON); WebhookError (400) when they are not there."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WebhookError(f"webhook: the {provider} payload is not JSON", 400) from None
    if not isinstance(payload, dict):
        raise WebhookError(f"webhook: the {provider} payload is not a JSON object", 400)
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref.startswith("refs/") or len(ref) > 1024:
        raise WebhookError(f"webhook: the {provider} payload has no 'ref' of the form refs/...", 400)
    candidates = [payload.get("checkout_sha"), payload.get("after")] if provider == "gitlab" else [payload.get("after")]
    sha: str | None = None
    for value in candidates:
        if isinstance(value, str) and _SHA.fullmatch(value.lower()):
            sha = value.lower()
            break
    if sha is None:
        raise WebhookError(f"webhook: the {provider} payload has no commit SHA ('after')", 400)
    return Push(provider, ref, None if _ZERO.fullmatch(sha) else sha)


def read_request(headers: Mapping[str, str], body: bytes, secret: bytes, *,
                 max_body: int = MAX_BODY_BYTES) -> Push | None:
    """Authenticate a webhook request and read its push: a Push, None for another event of a known
    provider (GitHub `ping`, a GitLab merge request hook...), or WebhookError (400, 401, 413).
    The provider is told by its event header; the signature or token is checked before the body is parsed."""
    if len(body) > max_body:
        raise WebhookError(f"webhook: body of {len(body)} bytes is over the limit of {max_body}", 413)
    github_event = _header(headers, "X-GitHub-Event")
    gitlab_event = _header(headers, "X-Gitlab-Event")
    if github_event is not None:
        verify_github(body, _header(headers, "X-Hub-Signature-256"), secret)
        return parse_push("github", body) if github_event.strip() == "push" else None
    if gitlab_event is not None:
        verify_gitlab(_header(headers, "X-Gitlab-Token"), secret)
        event = gitlab_event.strip()
        return parse_push("gitlab", body) if event in ("Push Hook", "Tag Push Hook") else None
    raise WebhookError("webhook: neither X-GitHub-Event nor X-Gitlab-Event: not a GitHub or GitLab webhook", 400)


def concerns(push: Push, followed: str | None) -> bool:
    """Whether `push` moves the followed ref: a full ref name (e.g. GitSource.resolved_ref), a short
    branch or tag name (either matches), or None (the default branch, not known yet: any branch push
    may concern it). A commit SHA never moves, so no push concerns it."""
    if followed is None:
        return push.ref.startswith("refs/heads/")
    if _SHA.fullmatch(followed.lower()):
        return False
    if followed.startswith("refs/"):
        return push.ref == followed
    return push.ref in (f"refs/heads/{followed}", f"refs/tags/{followed}")
