"""Temporal's overhead on agent launches (run by benches/temporal.sh, as root).

Four simulated hosts on this machine (a daemon each, with its own socket,
state, worktree base and repository; its worker as an unprivileged uid), and
Temporal's dev server. N agents whose payload is a small HTTP server
(`swarmcell __probe serve`), launched and stopped three ways, each with all N
in flight at once, new agent ids each way (each pays its worktree):
  direct  the daemon's `agent` request on the control sockets (round robin),
          as a client of the daemons would send it (what `ctl` does);
  host    a workflow per agent: LaunchAgent on a host's own queue (round robin),
          then StopAgent on that host;
  shared  the same, LaunchAgent on the shared queue (any host takes it).
Latency: for `direct` from the request to the answer (the sandbox is
healthy); through Temporal from the workflow's start to the LaunchAgent
result as the workflow sees it. Prints one JSON line per way, then a table.

usage: temporal_bench.py SWARMCELL_BIN WORKER_BIN AGENTS [HOSTS]
"""

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import temporal_driver  # noqa: E402  (the workflows)

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

VENV = "/opt/swarmcell/temporal-venv"
OWNER, WORKER_UID = 4242, 4343
LIMIT_S = 600  # the whole run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, f, limit=60):
    t = time.time()
    while not f():
        if time.time() - t > limit:
            raise SystemExit(f"temporal_bench: timed out waiting for {what}")
        time.sleep(0.1)


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True, capture_output=True)


def request(sock, req, limit=120):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(limit)
    s.connect(sock)
    s.sendall(json.dumps(req).encode() + b"\n")
    line = s.makefile().readline()
    s.close()
    return json.loads(line)


class Host:
    def __init__(self, root, name, swarmcell, worker, address, procs):
        self.name, self.dir = name, os.path.join(root, name)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.repo = os.path.join(self.dir, "repo")
        os.makedirs(self.repo)
        git("init", "-q", "-b", "main", cwd=self.repo)
        git("commit", "-q", "--allow-empty", "-m", "initial", cwd=self.repo)
        subprocess.run(["chown", "-R", f"{OWNER}:{OWNER}", self.repo], check=True)
        self.socket = os.path.join(self.dir, "ctl.sock")
        bindir = os.path.dirname(swarmcell)
        policy = os.path.join(self.dir, "policy.toml")
        with open(policy, "w") as f:
            f.write(f'[filesystem]\nread_only = ["/usr", "/bin", "/lib", "/lib64", "{bindir}"]\n'
                    f'[process]\ncommand = ["{swarmcell}", "__probe", "serve", "{{port}}"]\n')
        os.chmod(policy, 0o600)
        config = os.path.join(self.dir, "daemon.toml")
        with open(config, "w") as f:
            f.write(f'socket = "{self.socket}"\nsocket_group = {OWNER}\nallowed_uids = [0, {WORKER_UID}]\n'
                    f'launch_for = {{ "{WORKER_UID}" = [{OWNER}] }}\nworktree_base = "{self.dir}/base"\n'
                    f'repositories = ["{self.repo}"]\ncommands = ["{swarmcell}"]\npolicy = "{policy}"\n'
                    f'audit_log = "{self.dir}/audit.log"\nmetrics = ""\nstate_dir = "{self.dir}/state"\nlog_dir = "{self.dir}/logs"\n')
        os.chmod(config, 0o600)
        procs.append(subprocess.Popen([swarmcell, "daemon", "--config", config], stderr=open(os.path.join(self.dir, "daemon.log"), "w")))
        wait(f"{name}'s daemon", lambda: os.path.exists(self.socket) and self._up())
        wdir = os.path.join(self.dir, "worker")
        os.makedirs(wdir)
        os.chown(wdir, WORKER_UID, OWNER)
        log = os.path.join(wdir, "worker.log")

        def drop():
            os.setgid(OWNER)
            os.setgroups([])
            os.setuid(WORKER_UID)

        procs.append(subprocess.Popen(
            [worker, "--address", address, "--host-name", name, "--socket", self.socket, "--task-queue", "swarmcell-shared",
             "--max-launches", "64", "--max-activities", "400", "--min-free-mib", "0", "--lease", "120",
             "--repo", f"bench={self.repo}"],
            stderr=open(log, "w"), stdout=subprocess.DEVNULL, preexec_fn=drop))
        wait(f"{name}'s worker", lambda: "swarmcell-worker: serving" in open(log).read())

    def _up(self):
        try:
            return request(self.socket, {"cmd": "list"}, 2)["ok"]
        except OSError:
            return False


def stats(way, lat, wall):
    lat = sorted(lat)

    def pct(p):  # nearest rank
        return lat[min(len(lat) - 1, max(0, math.ceil(p / 100 * len(lat)) - 1))]

    return {"way": way, "agents": len(lat), "wall_s": round(wall, 3), "launches_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(pct(50) * 1000, 1), "p99_ms": round(pct(99) * 1000, 1), "max_ms": round(lat[-1] * 1000, 1)}


async def direct(hosts, n, tag):
    loop = asyncio.get_running_loop()
    lat = []

    async def one(i):
        h = hosts[i % len(hosts)]
        t = time.time()
        a = await loop.run_in_executor(None, request, h.socket,
                                       {"cmd": "agent", "agent": f"{tag}{i}", "task": f"open-swarm-{tag}.1.{i}", "repo": h.repo})
        if not a.get("ok"):
            raise SystemExit(f"direct launch {i}: {a}")
        lat.append(time.time() - t)
        return h, a["id"]

    t0 = time.time()
    launched = await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.time() - t0
    await asyncio.gather(*(loop.run_in_executor(None, request, h.socket, {"cmd": "stop", "id": id_}) for h, id_ in launched))
    return stats("direct (control socket)", lat, wall)


async def temporal(client, queue, hosts, n, tag, shared):
    async def one(i):
        h = hosts[i % len(hosts)]
        args = {"agent_id": f"{tag}{i}", "task_id": f"open-swarm-{tag}.1.{i}", "repo": "bench",
                "launch_queue": "swarmcell-shared" if shared else f"swarmcell-{h.name}"}
        start = time.time()
        handle = await client.start_workflow(temporal_driver.LaunchStopWorkflow.run, args, id=f"bench-{tag}-{i}-{os.getpid()}",
                                             task_queue=queue)
        r = await handle.result()
        return start, r

    # All N workflows started at once, like the N direct requests.
    t0 = time.time()
    done = await asyncio.gather(*(one(i) for i in range(n)))
    wall = max(r["healthy_at"] for _, r in done) - t0
    lat = [r["healthy_at"] - start for start, r in done]
    out = stats("temporal, shared queue" if shared else "temporal, host queues", lat, wall)
    out["by_host"] = {h.name: sum(1 for _, r in done if r["host"] == h.name) for h in hosts}
    return out


async def run(swarmcell, worker, n, nhosts, root, procs):
    port = free_port()
    temporal_cli = os.path.join(VENV, "bin", "temporal")
    procs.append(subprocess.Popen([temporal_cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "error",
                                   "--port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port())],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": root},
                                  start_new_session=True))
    address = f"127.0.0.1:{port}"

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False

    wait("Temporal", up)
    hosts = [Host(root, f"bench{i}", swarmcell, worker, address, procs) for i in range(nhosts)]
    client = await Client.connect(address)
    queue = f"swarmcell-bench-workflows-{os.getpid()}"
    results = []
    async with Worker(client, task_queue=queue, workflows=temporal_driver.WORKFLOWS, max_concurrent_workflow_tasks=200):
        results.append(await direct(hosts, n, "d"))
        print(json.dumps(results[-1]), flush=True)
        results.append(await temporal(client, queue, hosts, n, "t", False))
        print(json.dumps(results[-1]), flush=True)
        results.append(await temporal(client, queue, hosts, n, "s", True))
        print(json.dumps(results[-1]), flush=True)
    # Where the CPU went (the run on 2 shared cores is CPU-bound): seconds of
    # user+system time per component, its reaped children included.
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(p):
        try:
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return sum(int(x) for x in f[11:15]) / tick
        except OSError:
            return 0.0

    kinds = {"temporal dev server": [], "daemons (+launchers)": [], "workers": []}
    for p in procs:
        a0 = os.path.basename(p.args[0])
        kinds["temporal dev server" if a0 == "temporal" else "workers" if a0 == "swarmcell-worker" else "daemons (+launchers)"].append(cpu(p))
    import resource
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = {k: round(sum(v), 1) for k, v in kinds.items()}
    cpu_s["python client + workflow worker"] = round(me.ru_utime + me.ru_stime, 1)
    print(json.dumps({"cpu_seconds": cpu_s, "loadavg": open("/proc/loadavg").read().split()[:3]}), flush=True)
    print(f"\n{n} agents on {nhosts} hosts, all in flight at once (launch -> healthy):")
    print(f"{'way':28} {'launches/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for r in results:
        print(f"{r['way']:28} {r['launches_per_s']:>10} {r['p50_ms']:>9} {r['p99_ms']:>9} {r['max_ms']:>9}")
    base = results[0]
    for r in results[1:]:
        print(f"{r['way']}: p50 {r['p50_ms'] - base['p50_ms']:+.1f} ms, p99 {r['p99_ms'] - base['p99_ms']:+.1f} ms, "
              f"throughput x{r['launches_per_s'] / base['launches_per_s']:.2f} against direct")


def main():
    swarmcell, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nhosts = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    root = tempfile.mkdtemp(prefix="swarmcell-bench-temporal.")
    os.chmod(root, 0o755)
    procs = []
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"temporal_bench: over {LIMIT_S}s, stopped")))
    signal.alarm(LIMIT_S)
    try:
        asyncio.run(run(swarmcell, worker, n, nhosts, root, procs))
    finally:
        # Workers first (they stop what they still hold), then the daemons
        # (they stop everything left), then Temporal's whole group.
        for p in reversed(procs):
            if p.poll() is None:
                if p.args[0].endswith("temporal"):
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for h in os.listdir(root):
            subprocess.run([swarmcell, "worktree", "prune", "--base", os.path.join(root, h, "base")], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
