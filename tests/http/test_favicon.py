"""GET /favicon.ico: every page's implicit request gets an icon, not a 404."""

from __future__ import annotations

import struct
from typing import Any


async def test_favicon_is_a_small_icon(opp_auth_factory: Any, opp_auth_client: Any) -> None:
    """An ICO file (one 32x32 image), cacheable, without a token."""
    client = await opp_auth_client(await opp_auth_factory())
    async with client.request("GET", "/favicon.ico") as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.content_type == "image/x-icon"
        assert "max-age" in resp.headers["Cache-Control"]
    reserved, kind, count = struct.unpack("<HHH", body[:6])
    assert (reserved, kind, count) == (0, 1, 1)
    width, height = body[6], body[7]
    assert (width, height) == (32, 32)
    assert len(body) < 4096
