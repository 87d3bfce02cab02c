"""The flow engine's external steps (Home Assistant's ``external`` and ``external_step_done``)."""

from __future__ import annotations

from typing import Any

from opp_auth.flow import FlowHandler, FlowManager, FlowResult


class Handler(FlowHandler):
    """init sends the user away; wait records what it was given; done finishes."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.outside_done = False

    async def async_step_init(self, user_input: Any = None) -> FlowResult:
        return self.async_external_step(step_id="wait", url="https://idp.example/authorize?x=1")

    async def async_step_wait(self, user_input: Any = None) -> FlowResult:
        self.seen.append(user_input)
        if not self.outside_done:
            return self.async_external_step(step_id="wait", url="https://idp.example/authorize?x=1")
        return self.async_external_step_done(next_step_id="done")

    async def async_step_done(self, user_input: Any = None) -> FlowResult:
        self.seen.append(("done", user_input))
        return self.async_create_entry(title="t", data={"ok": True})


class Manager(FlowManager):
    def __init__(self) -> None:
        super().__init__()
        self.handler = Handler()

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        return self.handler


async def test_external_step_keeps_the_flow_and_never_passes_client_input() -> None:
    manager = Manager()
    result = await manager.async_init("x")
    assert result["type"] == "external" and result["url"].startswith("https://idp.example/")
    assert result["step_id"] == "wait"
    # A client submitting the flow cannot pose as the outside result: the step sees an empty dict.
    again = await manager.async_configure(result["flow_id"], {"identity": "admin"})
    assert again["type"] == "external"
    assert manager.handler.seen == [{}]
    manager.handler.outside_done = True
    done = await manager.async_configure(result["flow_id"], {})
    assert done == {"type": "external_step_done", "flow_id": result["flow_id"], "handler": "x", "step_id": "done"}
    # The next submission runs the named step, without input whatever is sent.
    final = await manager.async_configure(result["flow_id"], {"anything": 1})
    assert final["type"] == "create_entry"
    assert manager.handler.seen[-1] == ("done", None)
    assert manager.async_progress() == []
