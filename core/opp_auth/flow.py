"""The generic multi-step form engine (form / create_entry / abort) behind login and MFA setup."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

import voluptuous as vol

_LOGGER = logging.getLogger(__name__)

RESULT_TYPE_FORM = "form"
RESULT_TYPE_CREATE_ENTRY = "create_entry"
RESULT_TYPE_ABORT = "abort"
# Home Assistant's external step: the user is sent to ``url`` (an identity provider) and comes back
# through a route of the plugin; the flow stays open meanwhile. ``external_step_done`` says the
# outside part is over; the client then submits the flow again (no input) to run ``step_id``.
RESULT_TYPE_EXTERNAL_STEP = "external"
RESULT_TYPE_EXTERNAL_STEP_DONE = "external_step_done"
# Results that leave the flow open for a further submission.
OPEN_RESULTS = frozenset({RESULT_TYPE_FORM, RESULT_TYPE_EXTERNAL_STEP, RESULT_TYPE_EXTERNAL_STEP_DONE})

FlowResult = dict[str, Any]


class FlowError(Exception):
    """Base of the engine's errors."""


class UnknownHandler(FlowError):
    """No handler by that name."""


class UnknownFlow(FlowError):
    """No flow by that id (never existed, finished, aborted or expired)."""


class UnknownStep(FlowError):
    """The handler has no such step."""


class TooManyFlows(FlowError):
    """The cap on flows in progress is reached."""


class InvalidInput(FlowError):
    """The submitted input does not match the step's schema."""


class FlowHandler:
    """One flow in progress: a sequence of steps named async_step_<id>."""

    VERSION = 1

    flow_id: str = ""
    handler: Any = None
    context: dict[str, Any]
    cur_step: FlowResult | None = None
    created: float = 0.0
    deadline: float = 0.0

    def async_show_form(
        self,
        *,
        step_id: str,
        data_schema: vol.Schema | None = None,
        errors: dict[str, str] | None = None,
        description_placeholders: dict[str, Any] | None = None,
        last_step: bool | None = None,
    ) -> FlowResult:
        """Ask the user for input."""
        return {
            "type": RESULT_TYPE_FORM,
            "flow_id": self.flow_id,
            "handler": self.handler,
            "step_id": step_id,
            "data_schema": data_schema,
            "errors": errors,
            "description_placeholders": description_placeholders,
            "last_step": last_step,
        }

    def async_create_entry(
        self,
        *,
        title: str,
        data: Any,
        description: str | None = None,
        description_placeholders: dict[str, Any] | None = None,
    ) -> FlowResult:
        """Finish the flow successfully."""
        return {
            "version": self.VERSION,
            "type": RESULT_TYPE_CREATE_ENTRY,
            "flow_id": self.flow_id,
            "handler": self.handler,
            "title": title,
            "data": data,
            "description": description,
            "description_placeholders": description_placeholders,
        }

    def async_external_step(
        self, *, step_id: str, url: str, description_placeholders: dict[str, Any] | None = None
    ) -> FlowResult:
        """Send the user to url; the next submission of the flow runs async_step_<step_id> again.

        That submission comes from the client (the login page after the user
        came back), so its input is whatever the client sent and is not
        validated against any schema: the step must rely only on what the
        plugin itself recorded (its callback route), never on the input.
        """
        return {
            "type": RESULT_TYPE_EXTERNAL_STEP,
            "flow_id": self.flow_id,
            "handler": self.handler,
            "step_id": step_id,
            "url": url,
            "description_placeholders": description_placeholders,
        }

    def async_external_step_done(self, *, next_step_id: str) -> FlowResult:
        """The outside part is over; the next submission (its input ignored) runs async_step_<next_step_id>."""
        return {
            "type": RESULT_TYPE_EXTERNAL_STEP_DONE,
            "flow_id": self.flow_id,
            "handler": self.handler,
            "step_id": next_step_id,
        }

    def async_abort(self, *, reason: str, description_placeholders: dict[str, Any] | None = None) -> FlowResult:
        """Finish the flow without a result."""
        return {
            "type": RESULT_TYPE_ABORT,
            "flow_id": self.flow_id,
            "handler": self.handler,
            "reason": reason,
            "description_placeholders": description_placeholders,
        }


class FlowManager:
    """Runs flows: creates them, feeds them input, expires and caps them."""

    def __init__(self, *, max_flows: int = 1000, ttl: float = 600.0) -> None:
        """Flows live ttl seconds at most; at most max_flows at once."""
        self._flows: OrderedDict[str, FlowHandler] = OrderedDict()
        self._step_locks: dict[str, asyncio.Lock] = {}
        self.max_flows = max_flows
        self.ttl = ttl
        self._pending = 0

    async def async_create_flow(self, handler_key: Any, *, context: dict[str, Any], data: Any) -> FlowHandler:
        """Build the handler for handler_key (raise UnknownHandler)."""
        raise NotImplementedError

    async def async_finish_flow(self, flow: FlowHandler, result: FlowResult) -> FlowResult:
        """Post-process a result that ends a flow (or a step)."""
        return result

    def _purge_expired(self) -> None:
        """Drop flows past their deadline (oldest first, so stop at the first live one)."""
        now = time.monotonic()
        while self._flows:
            flow_id, flow = next(iter(self._flows.items()))
            if flow.deadline > now:
                break
            self._forget(flow_id)

    def async_progress(self) -> list[FlowHandler]:
        """Flows in progress."""
        self._purge_expired()
        return list(self._flows.values())

    def count_in_progress(self) -> int:
        """How many flows are in progress (expired ones dropped first)."""
        self._purge_expired()
        return len(self._flows)

    def async_get(self, flow_id: str) -> FlowHandler:
        """A live flow by id, or UnknownFlow."""
        self._purge_expired()
        flow = self._flows.get(flow_id) if isinstance(flow_id, str) else None
        if flow is None:
            raise UnknownFlow(flow_id)
        return flow

    async def async_init(
        self, handler_key: Any, *, context: dict[str, Any] | None = None, data: Any = None
    ) -> FlowResult:
        """Start a flow and run its first step (init, unless context says otherwise)."""
        self._purge_expired()
        context = dict(context or {})
        flow_id = uuid.uuid4().hex
        self._admit(flow_id, context)
        try:
            flow = await self.async_create_flow(handler_key, context=context, data=data)
        except FlowError:
            self._release(flow_id)
            raise
        except Exception:
            self._release(flow_id)
            _LOGGER.exception("Error creating a flow for %s", handler_key)
            aborted = FlowHandler()
            aborted.flow_id = flow_id
            aborted.handler = handler_key
            return aborted.async_abort(reason="unknown_error")
        if not self._holds_place(flow_id):  # displaced while the handler was being built
            raise TooManyFlows("displaced by a fairer share")
        flow.flow_id = flow_id
        flow.handler = handler_key
        flow.context = context
        flow.created = time.monotonic()
        flow.deadline = flow.created + self.ttl
        self._flows[flow.flow_id] = flow
        return await self._async_handle_step(flow, context.get("source", "init"), data)

    async def async_configure(self, flow_id: str, user_input: Any = None) -> FlowResult:
        """Feed input to the flow's current step; steps of one flow run one at a time."""
        flow = self.async_get(flow_id)
        lock = self._step_locks.setdefault(flow_id, asyncio.Lock())
        async with lock:
            # A step that ran meanwhile may have finished or aborted the flow.
            flow = self.async_get(flow_id)
            cur_step = flow.cur_step
            assert cur_step is not None
            if cur_step["type"] == RESULT_TYPE_EXTERNAL_STEP_DONE:
                user_input = None
            elif cur_step["type"] == RESULT_TYPE_EXTERNAL_STEP and user_input is not None:
                user_input = {}  # the client's input is never the outside result (see async_external_step)
            if (schema := cur_step.get("data_schema")) is not None and user_input is not None:
                try:
                    user_input = schema(user_input)
                except vol.Invalid as err:
                    raise InvalidInput(str(err)) from err
            try:
                return await self._async_handle_step(flow, cur_step["step_id"], user_input)
            finally:
                if flow_id not in self._flows:
                    self._forget(flow_id)

    def async_abort(self, flow_id: str) -> None:
        """Forget a flow (UnknownFlow if there is none)."""
        if self._forget(flow_id) is None:
            raise UnknownFlow(flow_id)

    # ---- the cap: one place per flow, taken before its handler is built -------------------------

    def _admit(self, flow_id: str, context: dict[str, Any]) -> None:
        """Take a place for a new flow (raise TooManyFlows); a subclass may share places out fairly."""
        if len(self._flows) + self._pending >= self.max_flows:
            raise TooManyFlows(f"{len(self._flows)} flows in progress")
        self._pending += 1

    def _holds_place(self, flow_id: str) -> bool:
        """Whether the flow being built still holds the place _admit gave it (and turn it into a flow)."""
        self._pending -= 1
        return True

    def _release(self, flow_id: str) -> None:
        """Give back the place of a flow that was never built."""
        self._pending -= 1

    def _forget(self, flow_id: str) -> FlowHandler | None:
        """Remove a flow and everything kept for it (the one way flows leave); None if there was none."""
        self._step_locks.pop(flow_id, None)
        return self._flows.pop(flow_id, None)

    async def _async_handle_step(self, flow: FlowHandler, step_id: str, user_input: Any) -> FlowResult:
        """Run one step; an exception inside a handler ends the flow with abort unknown_error."""
        method = f"async_step_{step_id}"
        if not hasattr(flow, method):
            self._forget(flow.flow_id)
            raise UnknownStep(f"Handler {flow.__class__.__name__} doesn't support step {step_id}")
        try:
            result: FlowResult = await getattr(flow, method)(user_input)
            if result["type"] not in OPEN_RESULTS:
                result = await self.async_finish_flow(flow, result)
        except FlowError:
            self._forget(flow.flow_id)
            raise
        except Exception:
            _LOGGER.exception("Error in step %s of flow %s (%s)", step_id, flow.flow_id, flow.handler)
            self._forget(flow.flow_id)
            return flow.async_abort(reason="unknown_error")
        if result["type"] in OPEN_RESULTS:
            flow.cur_step = result
        else:
            self._forget(flow.flow_id)
        return result
