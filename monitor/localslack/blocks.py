"""Block Kit checks that Slack's servers apply to ``chat.postMessage`` (and slack_sdk does not).

Only what a message-posting client can get wrong is checked: block count, block types, text objects and the
documented length limits, ``block_id`` uniqueness, and the undocumented total-text ceiling that Slack reports
as ``msg_blocks_too_long``. Errors are reported the way Slack does: a code plus messages carrying a JSON
pointer to the offending element.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_BLOCKS", "MAX_TOTAL_BLOCK_TEXT", "BlockError", "validate_blocks"]

MAX_BLOCKS = 50
MAX_TOTAL_BLOCK_TEXT = 13_200
"""Roughly where Slack starts answering ``msg_blocks_too_long`` (slackapi/bolt-js#2509)."""

_KNOWN_TYPES = frozenset(
    {
        "section",
        "header",
        "context",
        "divider",
        "actions",
        "image",
        "rich_text",
        "markdown",
        "input",
        "file",
        "video",
        "table",
    }
)


class BlockError(ValueError):
    """A message's blocks would be rejected by Slack.

    Attributes:
        code (`str`): Slack's error code (``invalid_blocks``, ``invalid_blocks_format``,
            ``msg_blocks_too_long``).
        details (`list[str]`): Slack-style messages with JSON pointers.
    """

    def __init__(self, code: str, details: list[str]) -> None:
        super().__init__(f"{code}: {'; '.join(details)}")
        self.code = code
        self.details = details


def validate_blocks(blocks: object) -> list[dict[str, Any]]:
    """Check a ``blocks`` argument as Slack does and return it as a list of dicts.

    Raises:
        `BlockError`: with the code Slack would answer.
    """
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise BlockError(
            "invalid_blocks_format", ["blocks must be an array of objects [json-pointer:/blocks]"]
        )
    errors: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    seen_ids: set[str] = set()
    total = 0
    for index, block in enumerate(blocks):
        where = f"/blocks/{index}"
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not 1 <= len(block_id) <= 255:
                errors.append(f"block_id must be 1-255 characters [json-pointer:{where}/block_id]")
            elif block_id in seen_ids:
                errors.append(f"duplicate block_id [json-pointer:{where}/block_id]")
            else:
                seen_ids.add(block_id)
        kind = block.get("type")
        if kind not in _KNOWN_TYPES:
            errors.append(f"unsupported type: {kind!r} [json-pointer:{where}/type]")
            continue
        total += _check_block(kind, block, where, errors)
    if errors:
        raise BlockError("invalid_blocks", errors)
    if total > MAX_TOTAL_BLOCK_TEXT:
        raise BlockError("msg_blocks_too_long", [f"blocks hold {total} characters of text"])
    return blocks


def _check_block(kind: str, block: dict[str, Any], where: str, errors: list[str]) -> int:
    """Validate one block; return its text length."""
    if kind == "header":
        return _text_object(block.get("text"), f"{where}/text", errors, limit=150, plain_only=True)
    if kind == "section":
        total = 0
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            errors.append(f"must provide text or fields [json-pointer:{where}]")
        if text is not None:
            total += _text_object(text, f"{where}/text", errors, limit=3000)
        if fields is not None:
            if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                errors.append(f"fields must hold 1-10 items [json-pointer:{where}/fields]")
            else:
                for i, field in enumerate(fields):
                    total += _text_object(field, f"{where}/fields/{i}", errors, limit=2000)
        return total
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            errors.append(f"elements must hold 1-10 items [json-pointer:{where}/elements]")
            return 0
        total = 0
        for i, element in enumerate(elements):
            if isinstance(element, dict) and element.get("type") == "image":
                continue
            total += _text_object(element, f"{where}/elements/{i}", errors, limit=3000)
        return total
    if kind == "markdown":
        text = block.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= 12_000:
            errors.append(f"text must be 1-12000 characters [json-pointer:{where}/text]")
            return 0
        return len(text)
    return 0


def _text_object(obj: object, where: str, errors: list[str], *, limit: int, plain_only: bool = False) -> int:
    if not isinstance(obj, dict):
        errors.append(f"expected a text object [json-pointer:{where}]")
        return 0
    kind = obj.get("type")
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if kind not in allowed:
        errors.append(f"must be one of {', '.join(allowed)} [json-pointer:{where}/type]")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"text must be a non-empty string [json-pointer:{where}/text]")
        return 0
    if len(text) > limit:
        errors.append(f"must be less than {limit + 1} characters [json-pointer:{where}/text]")
    return len(text)
