"""Credentials out of prompts, before a prompt leaves the machine.

Detection is Yelp's ``detect-secrets`` (its maintained detectors: cloud
keys, service tokens, private keys, keyword assignments, high-entropy
strings), plus the few kinds it has no detector for (Google, Hugging Face,
Anthropic and newer OpenAI keys, bearer tokens, typed assignments, the body
of a private key block).  Each secret's characters are replaced by
:data:`PLACEHOLDER`; text without a secret is left byte for byte as it was.

Lines are scanned once: a notebook's lines repeat from keystroke to
keystroke, so results are cached per line and a request costs a scan of
only the lines that changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from detect_secrets.plugins import (
    aws,
    azure_storage_key,
    basic_auth,
    discord,
    github_token,
    gitlab_token,
    jwt,
    mailchimp,
    npm,
    openai,
    private_key,
    pypi_token,
    sendgrid,
    slack,
    square_oauth,
    stripe,
    telegram_token,
    twilio,
)
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.keyword import KeywordDetector

from .context import FimContext

PLACEHOLDER = "[redacted]"

# detect-secrets' pattern detectors we use (IP addresses are not credentials;
# the IBM/Cloudant/SoftLayer/Artifactory keyword variants are covered by the
# keyword detector and misfire on short names like "cl_key").
_PATTERN_DETECTORS: tuple[RegexBasedDetector, ...] = (
    aws.AWSKeyDetector(),
    azure_storage_key.AzureStorageKeyDetector(),
    basic_auth.BasicAuthDetector(),
    discord.DiscordBotTokenDetector(),
    github_token.GitHubTokenDetector(),
    gitlab_token.GitLabTokenDetector(),
    jwt.JwtTokenDetector(),
    mailchimp.MailchimpDetector(),
    npm.NpmDetector(),
    openai.OpenAIDetector(),
    private_key.PrivateKeyDetector(),
    pypi_token.PypiTokenDetector(),
    sendgrid.SendGridDetector(),
    slack.SlackDetector(),
    square_oauth.SquareOAuthDetector(),
    stripe.StripeDetector(),
    telegram_token.TelegramBotTokenDetector(),
    twilio.TwilioKeyDetector(),
)
# Detectors whose patterns capture the secret in group 1 after some context
# (``aws_secret = "…"``, ``://user:password@``); the others' whole match is the secret.
_SECRET_IN_GROUP = (aws.AWSKeyDetector, basic_auth.BasicAuthDetector, npm.NpmDetector)

# Kinds detect-secrets has no detector for.
_OUR_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"AIza[0-9A-Za-z_\-]{35}",  # Google API key
        r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face token
        r"\bsk-ant-[A-Za-z0-9_\-]{20,}",  # Anthropic key
        # OpenAI keys without the T3BlbkFJ mark (digits and capitals: not a hyphenated name).
        r"\bsk-(?:proj-|svcacct-|admin-)?(?=[\w\-]*\d)(?=[\w\-]*[A-Z])[A-Za-z0-9_\-]{32,}",
        r"\b[rs]k_(?:test|live)_[0-9a-zA-Z]{16,}",  # Stripe test keys too
        r"(?i)(?<=bearer )[A-Za-z0-9\-._~+/]{16,}=*",  # Authorization: Bearer …
        # A long value given to a name ending in "key" (``wandb.login(key="…")``, ``signing_key = "…"``).
        r"(?i)\b(?:\w*_)?key\s*=\s*[rbuf]?['\"](?P<secret>[A-Za-z0-9_\-+/=.]{20,})['\"]",
        # A typed assignment to a credential's name (``db_password: str = "…"``).
        r"(?i)\b\w*(?:passw(?:or)?d|pwd|secret|token|api_?key|access_?key)\w*\s*:\s*[\w\[\]., |]+="
        r"\s*[rbuf]?['\"](?P<secret>[^'\"\s]{4,})['\"]",
    )
)
_KEYWORDS = KeywordDetector()
# detect-secrets' default limit; it leaves out UUIDs, hex digests and data: URIs.
_ENTROPY = Base64HighEntropyString(limit=4.5)

# A private key block: its body spans lines, so it is found in the whole text.
_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
_KEY_BLOCK_END = re.compile(r"\A.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----", re.DOTALL)

Span = tuple[int, int]


def _value_spans(line: str, values: Iterable[str]) -> Iterable[Span]:
    for value in values:
        start = line.find(value)
        while value and start >= 0:
            yield start, start + len(value)
            start = line.find(value, start + len(value))


@lru_cache(maxsize=32768)
def _line_spans(line: str) -> tuple[Span, ...]:
    """Where the secrets are in one line (cached: most lines come back on every keystroke)."""
    spans: list[Span] = []
    for detector in _PATTERN_DETECTORS:
        group = 1 if isinstance(detector, _SECRET_IN_GROUP) else 0
        for pattern in detector.denylist:
            for match in pattern.finditer(line):
                use = group if group and match.lastindex else 0
                spans.append(match.span(use))
    for pattern in _OUR_PATTERNS:
        for match in pattern.finditer(line):
            spans.append(match.span("secret" if "secret" in pattern.groupindex else 0))
    for scanner in (_KEYWORDS, _ENTROPY):
        found = scanner.analyze_line(filename="cell.py", line=line, line_number=0)
        spans.extend(_value_spans(line, {secret.secret_value or "" for secret in found}))
    return _merge(spans)


def _merge(spans: Iterable[Span]) -> tuple[Span, ...]:
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


@lru_cache(maxsize=256)
def secret_spans(text: str) -> tuple[Span, ...]:
    """Where the secrets are in ``text``: key blocks, then line by line.

    Cached whole too: the earlier and later cells' text is the same from one
    keystroke to the next, and hashing it costs far less than splitting it."""
    spans: list[Span] = []
    if "PRIVATE KEY" in text:
        spans.extend(m.span() for m in _KEY_BLOCK.finditer(text))
        head = _KEY_BLOCK_END.match(text)  # the end of a block that began before this text
        if head and "-----BEGIN" not in head.group():
            spans.append(head.span())
    offset = 0
    for line in text.split("\n"):
        spans.extend((offset + start, offset + end) for start, end in _line_spans(line))
        offset += len(line) + 1
    return _merge(spans)


def apply_spans(text: str, spans: Iterable[Span], start: int = 0, end: int | None = None) -> str:
    """``text[start:end]`` with each span (clipped to it) replaced by the placeholder."""
    end = len(text) if end is None else end
    out: list[str] = []
    at = start
    for a, b in spans:
        a, b = max(a, start), min(b, end)
        if a >= b:
            continue
        out.append(text[at:a] + PLACEHOLDER)
        at = b
    out.append(text[at:end])
    return "".join(out)


@dataclass(frozen=True)
class Redacted:
    context: FimContext
    count: int  # secrets replaced


def redact_context(context: FimContext) -> Redacted:
    """``context`` with every secret replaced; the same object when there was none."""
    count = 0
    changes: dict[str, Any] = {}
    for name in ("namespace", "before", "after"):
        text: str = getattr(context, name)
        spans = secret_spans(text)
        if spans:
            changes[name] = apply_spans(text, spans)
            count += len(spans)
    # The current cell as one text, so that a secret around the cursor is found whole.
    cell = context.cell_prefix + context.cell_suffix
    cursor = len(context.cell_prefix)
    spans = secret_spans(cell)
    if spans:
        changes["cell_prefix"] = apply_spans(cell, spans, 0, cursor)
        changes["cell_suffix"] = apply_spans(cell, spans, cursor)
        count += len(spans)
    return Redacted(replace(context, **changes) if changes else context, count)
