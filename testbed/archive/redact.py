"""Secrets never reach an archive: private keys, Ansible vault blocks, passwords and credential
tokens in key/value form, credentials in URLs. Applied to every text file before it is hashed;
JSON is redacted structurally so it stays JSON. (An MPTCP connection `token` is an identifier,
not a credential, and is kept.)"""

from __future__ import annotations

import re
from typing import Any

MARK = "<redacted>"
SECRET_KEY = (r"(?:[a-z0-9_]*_)?(?:password|passwd|passphrase|secret|private_key|api_key|"
              r"vault_pass(?:word)?|become_pass(?:word)?)|(?:[a-z0-9_]*_)?(?:api|auth|access|bearer|refresh|"
              r"session|github|vault)_token")
_SECRET_KEY = re.compile(rf"^(?i:{SECRET_KEY})$")


def _keep_quotes(m: re.Match[str]) -> str:
    value = m.group(2)
    return m.group(1) + (value[0] + MARK + value[0] if value[0] in "\"'" else MARK)


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S),
     f"-----BEGIN \\1PRIVATE KEY-----{MARK}-----END \\1PRIVATE KEY-----"),
    (re.compile(r"\$ANSIBLE_VAULT;[^\n]*\n(?:[ \t]*[0-9a-fA-F]+[ \t]*\n?)+"), f"$ANSIBLE_VAULT;{MARK}\n"),
    (re.compile(rf"(?im)(\"?\b(?:{SECRET_KEY})\b\"?\s*[:=]\s*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s,}}\n]+)"), _keep_quotes),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@"), f"\\1:{MARK}@"),
)
TEXT_SUFFIXES = {".yaml", ".yml", ".txt", ".log", ".stderr", ".stdout", ".conf", ".cfg", ".ini", ""}


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(data: Any) -> Any:
    """The same for decoded JSON: values under secret-looking keys, and secrets inside strings."""
    if isinstance(data, dict):
        return {k: MARK if isinstance(k, str) and _SECRET_KEY.match(k) and v not in (None, "")
                else redact_data(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_data(v) for v in data]
    if isinstance(data, str):
        return redact(data)
    return data
