"""Decode only what a source reads of a page body: its envelope members and a few keys per record.

A list page's records go to DuckDB as the raw body (:class:`pipelines.page.Page`); Python needs
only the envelope (success flag, error, pagination) and, per record, the key and perhaps a
timestamp, to walk the list and check it. Decoding the whole body into dictionaries cost more
than anything else the fetch did in Python: 200,000 swap orders (350 MB) took ~5 s of CPU in
``orjson.loads`` and the garbage collection of the dicts it built, all of it holding the GIL the
other fetching threads were waiting for. :class:`PageShape` decodes the same bytes with msgspec
into structs that name only those members and keys: msgspec still reads (and so validates) the
whole document, but builds nothing for what it skips (~12x less CPU on those pages).

The result is the same plain ``dict`` an ``orjson.loads`` would give, minus what was skipped, so
envelope checks and pagination code read it as before. A body of any other shape (the records
member is not a list of objects, the document is not an object) decodes to None, and the client
parses it in full instead: an unexpected body is judged exactly as it always was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

_UNSET = msgspec.UNSET


class PageShape:
    """The members of a page body a source reads (``members``), with the list ``records``, of
    whose objects only ``keys`` are kept."""

    def __init__(self, *, members: Sequence[str], records: str, keys: Sequence[str]) -> None:
        self.members = tuple(dict.fromkeys([*members, records]))
        self.records = records
        self.keys = tuple(dict.fromkeys(keys))
        # Struct fields need identifiers: f0, f1... each renamed to its JSON name.
        record = msgspec.defstruct(
            "Record", [(f"f{i}", Any, msgspec.field(default=_UNSET, name=k)) for i, k in enumerate(self.keys)]
        )
        body = msgspec.defstruct(
            "Body",
            [
                (f"f{i}", list[record] if m == records else Any, msgspec.field(default=_UNSET, name=m))
                for i, m in enumerate(self.members)
            ],
        )
        self._decoder = msgspec.json.Decoder(body)

    def decode(self, content: bytes) -> dict[str, Any] | None:
        """The body as a dict of the members present (records as dicts of the keys present), or
        None when the body is not an object whose ``records`` member, if any, lists objects.
        Malformed JSON raises :class:`msgspec.DecodeError`."""
        try:
            body = self._decoder.decode(content)
        except msgspec.ValidationError:
            return None
        out = {m: v for m, v in zip(self.members, msgspec.structs.astuple(body), strict=True) if v is not _UNSET}
        records = out.get(self.records)
        if records is not None:
            keys = self.keys
            out[self.records] = [
                {k: v for k, v in zip(keys, msgspec.structs.astuple(r), strict=True) if v is not _UNSET}
                for r in records
            ]
        return out
