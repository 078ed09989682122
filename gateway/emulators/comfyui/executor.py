"""ComfyUI's prompt queue, history, websocket fan-out and the one-at-a-time executor.

Follows upstream ``execution.PromptQueue`` / ``PromptExecutor`` and ``main.prompt_worker``:

- the queue is ordered by ``number`` (``front`` gives negative numbers); every put, get, delete and finish
  broadcasts ``status``; ``queue_remaining`` counts pending + running;
- an execution sends ``execution_start``, ``execution_cached``, then ``executing`` / ``progress`` / ``executed``
  per node, then ``execution_success`` | ``execution_error`` | ``execution_interrupted``, stores the history
  entry, and finally ``executing {node: null}``. Prompt messages go only to the submitting ``client_id`` (none
  without one), except ``execution_interrupted`` (broadcast when there is no client) and ``progress`` (sent
  with ``sid=None``, i.e. to everybody, when there is no client), as ``add_message`` / ``send_sync`` do;
- node outputs are cached between prompts by input signature (upstream's classic cache): resubmitting the same
  workflow re-sends the cached ``executed`` and makes no new files; only the last prompt's nodes are kept.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from gateway.emulators.comfyui.files import FileStore
from gateway.emulators.comfyui.nodes import OOM_TIPS, Env, OutOfMemoryError
from gateway.emulators.comfyui.registry import NODES, NodeDef
from gateway.emulators.comfyui.validation import full_type_name
from gateway.emulators.core import Interrupted, SimulatedGPU

log = logging.getLogger(__name__)
MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def row(self) -> list[Any]:
        """The ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` of /queue and /history."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class Hub:
    """The websocket clients: one outgoing queue per ``sid`` (``send_sync`` + ``publish_loop`` upstream)."""

    def __init__(self) -> None:
        self.sockets: dict[str, asyncio.Queue[str]] = {}

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        message = json.dumps({"type": event, "data": data})
        if sid is None:
            for queue in self.sockets.values():
                queue.put_nowait(message)
        elif sid in self.sockets:
            self.sockets[sid].put_nowait(message)


class PromptQueue:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.pending: list[QueueItem] = []
        self.running: dict[int, QueueItem] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self._counter = 0
        self._has_items = asyncio.Event()

    def remaining(self) -> int:
        return len(self.pending) + len(self.running)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.remaining()}}

    def updated(self) -> None:
        self.hub.send("status", {"status": self.queue_info()})

    def put(self, item: QueueItem) -> None:
        bisect.insort(self.pending, item, key=lambda i: (i.number, i.prompt_id))
        self.updated()
        self._has_items.set()

    async def get(self) -> tuple[QueueItem, int]:
        while not self.pending:
            self._has_items.clear()
            await self._has_items.wait()
        item = self.pending.pop(0)
        task_id = self._counter
        self._counter += 1
        self.running[task_id] = item
        self.updated()
        return item, task_id

    def task_done(self, task_id: int, history_result: dict[str, Any], status: dict[str, Any]) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[item.prompt_id] = {"prompt": item.row(), "outputs": {}, "status": status, **history_result}
        self.updated()

    def wipe_queue(self) -> None:
        self.pending.clear()
        self.updated()

    def delete_queue_item(self, prompt_id: str) -> bool:
        for index, item in enumerate(self.pending):
            if item.prompt_id == prompt_id:
                del self.pending[index]
                self.updated()
                return True
        return False

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        if prompt_id is not None:
            return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, list[Any]] | None


def _format_value(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | bool | str) else str(value)


@dataclass
class _Run:
    """The ``RunContext`` a node sees while the executor runs it."""

    executor: Executor
    prompt_id: str
    node_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    gpu: SimulatedGPU
    files: FileStore

    def interrupted(self) -> bool:
        return self.executor.interrupt_requested

    async def progress(self, value: int, total: int) -> None:
        data = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id}
        self.executor.hub.send("progress", data, self.executor.client_id)


class NodeFailed(Exception):
    def __init__(self, node_id: str, error: Exception, inputs: dict[str, Any]) -> None:
        super().__init__(str(error))
        self.node_id, self.error, self.inputs = node_id, error, inputs


class InterruptedAt(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


@dataclass
class Executor:
    """Runs one prompt at a time, like ``prompt_worker``."""

    hub: Hub
    queue: PromptQueue
    files: FileStore
    gpu: SimulatedGPU
    env: Env
    nodes: dict[str, NodeDef] = field(default_factory=lambda: dict(NODES))
    client_id: str | None = None
    last_node_id: str | None = None
    interrupt_requested: bool = False
    cache: dict[str, CacheEntry] = field(default_factory=dict)

    async def worker(self) -> None:
        while True:
            item, task_id = await self.queue.get()
            try:
                history_result, status = await self.execute(item)
            except Exception:  # the emulator's own bug: record it rather than stop the worker
                log.exception("comfyui emulator: execution crashed")
                history_result = {"outputs": {}, "meta": {}}
                status = {"status_str": "error", "completed": False, "messages": []}
            self.queue.task_done(task_id, history_result, status)
            if self.client_id is not None:
                self.hub.send("executing", {"node": None, "prompt_id": item.prompt_id}, self.client_id)
            self.last_node_id = None

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: global, or only when ``prompt_id`` is the running prompt."""
        if prompt_id and not any(item.prompt_id == prompt_id for item in self.queue.running.values()):
            return
        self.interrupt_requested = True
        self.gpu.interrupt()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        if unload_models or free_memory:
            self.gpu.loaded_model = None
        if free_memory:
            self.cache.clear()

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        memo: dict[str, str] = {}

        def sig(node_id: str) -> str:
            if node_id not in memo:
                memo[node_id] = ""  # a cycle or a bad link (outside the validated outputs) never matches
                node = prompt[node_id]
                parts: dict[str, Any] = {}
                for name, value in sorted(node.get("inputs", {}).items()):
                    linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                    parts[name] = ["link", sig(value[0]), value[1]] if linked and value[0] in prompt else value
                definition = self.nodes[node["class_type"]]
                try:
                    changed = definition.is_changed(self.env, node.get("inputs", {})) if definition.is_changed else ""
                except ValueError:  # a LoadImage path outside input/ (only in a node no output needs)
                    changed = ""
                memo[node_id] = json.dumps([node["class_type"], parts, changed], sort_keys=True, default=str)
            return memo[node_id]

        for node_id in prompt:
            sig(node_id)
        return memo

    def _order(self, prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        """ExecutionList's staging order, with its ``ux_friendly_pick_node`` preference for output nodes."""
        pending: dict[str, set[str]] = {}  # node -> unfinished inputs
        blocking: dict[str, set[str]] = {}  # node -> nodes waiting for it
        stack = list(outputs)
        while stack:
            node_id = stack.pop()
            if node_id in pending:
                continue
            pending[node_id] = set()
            blocking.setdefault(node_id, set())
            for value in prompt[node_id]["inputs"].values():
                if isinstance(value, list) and value[0] not in cached:
                    stack.append(value[0])
                    pending[node_id].add(value[0])
                    blocking.setdefault(value[0], set()).add(node_id)

        def is_output(node_id: str) -> bool:
            return self.nodes[prompt[node_id]["class_type"]].output_node

        order: list[str] = []
        while pending:
            ready = [n for n, deps in pending.items() if not deps]
            pick = next((n for n in ready if is_output(n)), None)
            pick = pick or next((n for n in ready if any(is_output(b) for b in blocking[n])), None)
            pick = pick or next(
                (n for n in ready if any(is_output(b2) for b in blocking[n] for b2 in blocking.get(b, ()))), None
            )
            pick = pick or ready[0]
            order.append(pick)
            del pending[pick]
            for deps in pending.values():
                deps.discard(pick)
        return order

    async def execute(self, item: QueueItem) -> tuple[dict[str, Any], dict[str, Any]]:
        prompt_id, prompt = item.prompt_id, item.prompt
        self.interrupt_requested = False
        self.client_id = item.extra_data.get("client_id")
        messages: list[list[Any]] = []

        def add_message(event: str, data: dict[str, Any], broadcast: bool) -> None:
            data = {**data, "timestamp": now_ms()}
            messages.append([event, data])
            if self.client_id is not None or broadcast:
                self.hub.send(event, data, self.client_id)

        add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        signatures = self._signatures(prompt)
        wanted = set(signatures.values())
        self.cache = {key: entry for key, entry in self.cache.items() if key in wanted}
        cached = [node_id for node_id in prompt if signatures[node_id] and signatures[node_id] in self.cache]
        add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False)

        executed: list[str] = []
        values: dict[str, tuple[Any, ...]] = {n: self.cache[signatures[n]].outputs for n in cached}
        success = True
        try:
            for node_id in self._order(prompt, item.outputs, set(cached)):
                await self._run_node(item, node_id, signatures[node_id], values, executed)
        except InterruptedAt as stop:
            success = False
            data = {
                "prompt_id": prompt_id,
                "node_id": stop.node_id,
                "node_type": prompt[stop.node_id]["class_type"],
                "executed": executed,
            }
            add_message("execution_interrupted", data, broadcast=True)
        except NodeFailed as failure:
            success = False
            error = failure.error
            is_oom = isinstance(error, OutOfMemoryError)
            add_message(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": failure.node_id,
                    "node_type": prompt[failure.node_id]["class_type"],
                    "executed": executed,
                    "exception_message": f"{error}\n{OOM_TIPS if is_oom else ''}",
                    "exception_type": OutOfMemoryError.type_name if is_oom else full_type_name(error),
                    "traceback": traceback.format_tb(error.__traceback__),
                    "current_inputs": failure.inputs,
                    "current_outputs": cached,
                },
                broadcast=False,
            )
        else:
            add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in prompt:
            entry = self.cache.get(signatures[node_id])
            if entry is not None and entry.ui is not None:
                outputs[node_id] = entry.ui
                meta[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
        status = {"status_str": "success" if success else "error", "completed": success, "messages": messages}
        return {"outputs": outputs, "meta": meta}, status

    async def _run_node(
        self, item: QueueItem, node_id: str, signature: str, values: dict[str, tuple[Any, ...]], executed: list[str]
    ) -> None:
        node = item.prompt[node_id]
        definition = self.nodes[node["class_type"]]
        hit = self.cache.get(signature)
        if hit is not None:  # a cached output node: its result is sent again, nothing runs
            values[node_id] = hit.outputs
            if self.client_id is not None:
                data = {"node": node_id, "display_node": node_id, "output": hit.ui, "prompt_id": item.prompt_id}
                self.hub.send("executed", data, self.client_id)
            return
        inputs = {
            name: values[value[0]][value[1]] if isinstance(value, list) else value
            for name, value in node["inputs"].items()
        }
        if self.client_id is not None:
            self.last_node_id = node_id
            data = {"node": node_id, "display_node": node_id, "prompt_id": item.prompt_id}
            self.hub.send("executing", data, self.client_id)
        if self.interrupt_requested:
            raise InterruptedAt(node_id)
        context = _Run(self, item.prompt_id, node_id, item.prompt, item.extra_data, self.gpu, self.files)
        try:
            outputs, ui = await definition.run(context, inputs)
        except Interrupted:
            raise InterruptedAt(node_id) from None
        except Exception as ex:
            formatted = {name: [_format_value(value)] for name, value in inputs.items()}
            raise NodeFailed(node_id, ex, formatted) from ex
        values[node_id] = outputs
        self.cache[signature] = CacheEntry(outputs, ui)
        if ui is not None and self.client_id is not None:
            data = {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": item.prompt_id}
            self.hub.send("executed", data, self.client_id)
        executed.append(node_id)
