"""Content ids: the first 12 hex digits of the SHA-1 of a JSON value (keys sorted, other objects
as their str), so equal settings give equal ids across processes and sessions."""
from __future__ import annotations

import hashlib
import json


def content_id(data) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
