// Drive a sandboxed OpenCode server with the official SDK (@opencode-ai/sdk):
// one session, then each command of argv[3..] through `session.shell` (the
// agent's own shell tool; no model needed). Prints one JSON line per command:
// {"command", "output", "ms"}.
// The sandbox's secret (OpenCode's basic-auth password) comes in the
// environment as OPENCODE_SECRET, never on the command line.
// usage: OPENCODE_SECRET=... node opencode-shell.mjs SDK_DIR PORT COMMAND...
const [sdkDir, port, ...commands] = process.argv.slice(2);
const { createOpencodeClient } = await import(`${sdkDir}/node_modules/@opencode-ai/sdk/dist/index.js`);
const secret = process.env.OPENCODE_SECRET ?? "";
const headers = secret ? { Authorization: `Basic ${Buffer.from(`opencode:${secret}`).toString("base64")}` } : {};
const client = createOpencodeClient({ baseUrl: `http://127.0.0.1:${port}`, headers });
const session = await client.session.create({ body: {} });
if (!session.data) throw new Error(`session.create: ${JSON.stringify(session.error)}`);
const id = session.data.id;
for (const command of commands) {
  const start = Date.now();
  const r = await client.session.shell({ path: { id }, body: { agent: "build", command } });
  if (r.error) throw new Error(`session.shell: ${JSON.stringify(r.error)}`);
  const msgs = await client.session.messages({ path: { id } });
  const last = (msgs.data ?? []).at(-1);
  const output = (last?.parts ?? []).filter((p) => p.type === "tool").map((p) => p.state?.output ?? p.state?.error ?? "").join("\n");
  console.log(JSON.stringify({ command, output, ms: Date.now() - start }));
}
