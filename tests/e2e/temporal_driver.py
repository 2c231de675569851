"""Test workflows for swarmcell's Temporal worker (the Python SDK, temporalio).

usage: python temporal_driver.py ADDRESS WORKFLOW PARAMS_JSON

Runs a workflow worker for these workflows on a queue of its own, executes
WORKFLOW with PARAMS, prints its result as one JSON line, and exits. The
activities (LaunchAgent, RunAgentCommand, StopAgent, AgentStatus) are
swarmcell-worker's, called by name on the queues PARAMS name.
"""

import asyncio
import json
import os
import sys
import time
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker


def opts(p, queue, attempts, heartbeat=None, limit=300):
    o = {
        "task_queue": queue,
        "start_to_close_timeout": timedelta(seconds=limit),
        "retry_policy": RetryPolicy(maximum_attempts=attempts, initial_interval=timedelta(milliseconds=200)),
    }
    if heartbeat:
        o["heartbeat_timeout"] = timedelta(seconds=heartbeat)
    return o


def public(launch):
    # The secret stays in the workflow (its history); the test's output does not need it.
    return {k: v for k, v in launch.items() if k != "secret"}


@workflow.defn
class AgentWorkflow:
    """Launch an agent (on `launch_queue`: a host's own queue or the shared
    one), pin its later activities to the host that runs it, run `commands`
    in one session, stop it. With `fallback_queue`: if a command fails (its
    worker died and its heartbeat timed out), launch the same task there and
    run the commands again."""

    @workflow.run
    async def run(self, p: dict) -> dict:
        hb = p.get("heartbeat_s", 10)
        req = {"agent_id": p["agent_id"], "task_id": p["task_id"], "repo": p["repo"]}
        if p.get("branch"):
            req["branch"] = p["branch"]
        started = workflow.now()
        launch = await workflow.execute_activity("LaunchAgent", req, **opts(p, p["launch_queue"], 3, hb))
        healthy_s = (workflow.now() - started).total_seconds()
        hosts = [launch["host"]]
        failed_on = None
        runs = []
        attempt = 0
        while True:
            queue = launch["queue"]
            try:
                session = None
                runs = []
                for cmd in p.get("commands", []):
                    r = await workflow.execute_activity(
                        "RunAgentCommand",
                        {"sandbox_id": launch["sandbox_id"], "command": "shell", "arguments": cmd, **({"session_id": session} if session else {})},
                        **opts(p, queue, 1, hb, limit=p.get("command_limit_s", 300)),
                    )
                    session = r["session_id"]
                    runs.append(r)
                status = await workflow.execute_activity("AgentStatus", {"sandbox_id": launch["sandbox_id"]}, **opts(p, queue, 3, hb))
                break
            except ActivityError as e:
                if not p.get("fallback_queue") or attempt > 0:
                    raise
                attempt += 1
                failed_on = {"host": launch["host"], "sandbox_id": launch["sandbox_id"], "error": str(e.cause or e)}
                req = {**req, "repo": p.get("fallback_repo", req["repo"])}
                launch = await workflow.execute_activity("LaunchAgent", req, **opts(p, p["fallback_queue"], 3, hb))
                hosts.append(launch["host"])
        stop = await workflow.execute_activity("StopAgent", {"sandbox_id": launch["sandbox_id"]}, **opts(p, launch["queue"], 3, hb))
        return {"launch": public(launch), "healthy_s": healthy_s, "runs": runs, "status": status, "stop": stop, "hosts": hosts, "failed_on": failed_on}


@workflow.defn
class RetryLaunchWorkflow:
    """LaunchAgent twice with the same task id (a retry), then StopAgent."""

    @workflow.run
    async def run(self, p: dict) -> dict:
        req = {"agent_id": p["agent_id"], "task_id": p["task_id"], "repo": p["repo"]}
        first = await workflow.execute_activity("LaunchAgent", req, **opts(p, p["launch_queue"], 3))
        second = await workflow.execute_activity("LaunchAgent", req, **opts(p, first["queue"], 3))
        stop = await workflow.execute_activity("StopAgent", {"sandbox_id": first["sandbox_id"]}, **opts(p, first["queue"], 3))
        again = await workflow.execute_activity("StopAgent", {"sandbox_id": first["sandbox_id"]}, **opts(p, first["queue"], 3))
        return {"first": public(first), "second": public(second), "stop": stop, "stop_again": again}


@workflow.defn
class InvalidInputWorkflow:
    """Each of `inputs` to `activity`, with up to 5 attempts: how each failed."""

    @workflow.run
    async def run(self, p: dict) -> list:
        out = []
        for arg in p["inputs"]:
            try:
                await workflow.execute_activity(p["activity"], arg, **opts(p, p["queue"], p.get("attempts", 5)))
                out.append({"ok": True})
            except ActivityError as e:
                cause = e.cause
                out.append({
                    "ok": False,
                    "non_retryable": isinstance(cause, ApplicationError) and cause.non_retryable,
                    "message": str(cause),
                    "retry_state": str(e.retry_state),
                })
        return out


@workflow.defn
class LaunchStopWorkflow:
    """The benchmark's agent: LaunchAgent on `launch_queue`, StopAgent on its host."""

    @workflow.run
    async def run(self, p: dict) -> dict:
        req = {"agent_id": p["agent_id"], "task_id": p["task_id"], "repo": p["repo"]}
        launch = await workflow.execute_activity("LaunchAgent", req, **opts(p, p["launch_queue"], 3, limit=120))
        healthy = workflow.now()
        await workflow.execute_activity("StopAgent", {"sandbox_id": launch["sandbox_id"]}, **opts(p, launch["queue"], 3, limit=60))
        return {"host": launch["host"], "healthy_at": healthy.timestamp()}


@workflow.defn
class LaunchOnlyWorkflow:
    """LaunchAgent, and leave the agent running (its result without the secret)."""

    @workflow.run
    async def run(self, p: dict) -> dict:
        req = {"agent_id": p["agent_id"], "task_id": p["task_id"], "repo": p["repo"]}
        return public(await workflow.execute_activity("LaunchAgent", req, **opts(p, p["launch_queue"], 3)))


@workflow.defn
class CancelCommandWorkflow:
    """LaunchAgent, start a long RunAgentCommand, cancel it after `after_s`."""

    @workflow.run
    async def run(self, p: dict) -> dict:
        req = {"agent_id": p["agent_id"], "task_id": p["task_id"], "repo": p["repo"]}
        launch = await workflow.execute_activity("LaunchAgent", req, **opts(p, p["launch_queue"], 3))
        handle = workflow.start_activity(
            "RunAgentCommand", {"sandbox_id": launch["sandbox_id"], "command": "shell", "arguments": "sleep 120"},
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED, **opts(p, launch["queue"], 1, 3))
        await workflow.sleep(p.get("after_s", 4))
        handle.cancel()
        try:
            await handle
            return {"sandbox_id": launch["sandbox_id"], "cancelled": False}
        except ActivityError as e:
            return {"sandbox_id": launch["sandbox_id"], "cancelled": True, "error": str(e.cause or e)}


WORKFLOWS = [CancelCommandWorkflow, AgentWorkflow, RetryLaunchWorkflow, InvalidInputWorkflow, LaunchStopWorkflow, LaunchOnlyWorkflow]


async def bench(client, queue, p):
    """Start `count` LaunchStopWorkflows at once; per agent, the time from its
    workflow's start to its sandbox being healthy."""
    t0 = time.time()
    handles = []
    for i in range(p["count"]):
        q = p["queues"][i % len(p["queues"])] if p.get("queues") else p["launch_queue"]
        repo = p["repos"][i % len(p["repos"])] if p.get("repos") else p["repo"]
        args = {"agent_id": f"b{i}", "task_id": f"open-swarm-bench.{p['round']}.{i}", "repo": repo, "launch_queue": q}
        start = time.time()
        h = await client.start_workflow(LaunchStopWorkflow.run, args, id=f"bench-{p['round']}-{i}-{os.getpid()}", task_queue=queue)
        handles.append((start, h))
    results = []
    for start, h in handles:
        r = await h.result()
        results.append({"host": r["host"], "latency_s": r["healthy_at"] - start})
    return {"wall_s": time.time() - t0, "agents": results}


async def main():
    address, name, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = await Client.connect(address, identity=f"swarmcell-test-driver-{os.getpid()}")
    queue = f"swarmcell-test-workflows-{os.getpid()}"
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, max_concurrent_workflow_tasks=100):
        if name == "bench":
            result = await bench(client, queue, params)
        else:
            wf = {w.__name__: w for w in WORKFLOWS}[name]
            result = await client.execute_workflow(wf.run, params, id=f"{name}-{params.get('task_id', 'x')}-{os.getpid()}", task_queue=queue)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    # The result is out; the SDK's worker shutdown has no say in the exit status.
    os._exit(0)
