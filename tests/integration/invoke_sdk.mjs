// Drives `kindling serve` with @aws-sdk/client-lambda (tests/peers), for
// tests/integration/77-invoke-sdk.sh:
//   node invoke_sdk.mjs ENDPOINT KEY_ID SECRET SHELL1 SHELL2 NODE1
// SHELL1/SHELL2/NODE1 are ImageUris of the Lambda test images.  Prints one
// "ok: ..." line per check; exits 1 with the reason on the first failure.
import { createRequire } from "node:module";

const require = createRequire(process.env.PEERS + "/");
const L = require("@aws-sdk/client-lambda");
const [endpoint, keyId, secret, shell1, shell2, node1] = process.argv.slice(2);
const mk = (sec) => new L.LambdaClient({
  endpoint, region: "us-east-1", maxAttempts: 1,
  credentials: { accessKeyId: keyId, secretAccessKey: sec },
});
const c = mk(secret);
const role = "arn:aws:iam::000000000000:role/sdk";
const dec = (p) => JSON.parse(Buffer.from(p).toString());
const enc = (o) => Buffer.from(JSON.stringify(o));
function check(cond, what) {
  if (!cond) { console.error("FAIL: " + what); process.exit(1); }
}
async function expectError(p, name, what) {
  try { await p; } catch (e) { check(e.name === name, `${what}: got ${e.name}: ${e.message}`); return e; }
  check(false, `${what}: no ${name}`);
}
const waitOpts = { client: c, maxWaitTime: 300, minDelay: 1, maxDelay: 2 };

// Create, wait, get, list.
for (const [name, uri, mem] of [["sdk-sh", shell1, 128], ["sdk-node", node1, 256]]) {
  const r = await c.send(new L.CreateFunctionCommand({
    FunctionName: name, PackageType: "Image", Code: { ImageUri: uri }, Role: role, Timeout: 30, MemorySize: mem,
    Environment: { Variables: { TEST_VAR: "sdk" } },
  }));
  check(r.State === "Pending" && r.FunctionName === name, `create ${name}: ${JSON.stringify(r)}`);
}
await L.waitUntilFunctionActiveV2(waitOpts, { FunctionName: "sdk-sh" });
await L.waitUntilFunctionActiveV2(waitOpts, { FunctionName: "sdk-node" });
const g = await c.send(new L.GetFunctionCommand({ FunctionName: "sdk-node" }));
check(g.Configuration.State === "Active" && g.Configuration.MemorySize === 256 && g.Code.ImageUri === node1,
  "GetFunction: " + JSON.stringify(g));
const names = [];
for await (const page of L.paginateListFunctions({ client: c, pageSize: 1 }, {})) {
  for (const f of page.Functions) names.push(f.FunctionName);
}
check(names.join(",") === "sdk-node,sdk-sh", "paginated ListFunctions: " + names);
await expectError(c.send(new L.GetFunctionCommand({ FunctionName: "sdk-none" })), "ResourceNotFoundException", "unknown function");
console.log("ok: create, wait for Active, get, list paginated one by one, 404 as ResourceNotFoundException");

// Invokes: cold, warm, tail, errors, Event, DryRun.
for (const name of ["sdk-sh", "sdk-node"]) {
  const a = await c.send(new L.InvokeCommand({ FunctionName: name, Payload: enc({ n: 1 }) }));
  const b = await c.send(new L.InvokeCommand({ FunctionName: name, Payload: enc({ n: 2 }) }));
  const pa = dec(a.Payload), pb = dec(b.Payload);
  check(a.StatusCode === 200 && a.ExecutedVersion === "$LATEST" && pa.count === 1, `${name} cold: ${JSON.stringify(pa)}`);
  check(pb.count === 2 && pb.pid === pa.pid, `${name} warm: ${JSON.stringify(pb)}`);
}
const t = await c.send(new L.InvokeCommand({ FunctionName: "sdk-node", LogType: "Tail", Payload: enc({ log: "sdk-tail" }) }));
const tail = Buffer.from(t.LogResult, "base64").toString();
check(/^START RequestId: /m.test(tail) && tail.includes("sdk-tail") && /^REPORT RequestId: /m.test(tail), "tail: " + tail);
const f = await c.send(new L.InvokeCommand({ FunctionName: "sdk-node", Payload: enc({ fail: "sdk-boom" }) }));
check(f.FunctionError === "Unhandled" && dec(f.Payload).errorMessage === "sdk-boom", "function error: " + JSON.stringify(f));
const d = await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", InvocationType: "DryRun" }));
check(d.StatusCode === 204, "DryRun " + d.StatusCode);
const ev = await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", InvocationType: "Event", Payload: enc({ stdout: "sdk-event" }) }));
check(ev.StatusCode === 202, "Event " + ev.StatusCode);
await expectError(c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Payload: Buffer.from("{bad") })),
  "InvalidRequestContentException", "malformed payload");
console.log("ok: cold then warm in one sandbox, Tail log, Unhandled function error, DryRun 204, Event 202, bad payload 400");

// Configuration, versions, code.
await c.send(new L.UpdateFunctionConfigurationCommand({ FunctionName: "sdk-sh", Environment: { Variables: { TEST_VAR: "sdk2" } } }));
await L.waitUntilFunctionUpdatedV2(waitOpts, { FunctionName: "sdk-sh" });
const e2 = dec((await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Payload: enc({ env: true }) }))).Payload);
check(e2.env.TEST_VAR === "sdk2" && e2.count === 1, "new environment: " + JSON.stringify(e2));
await expectError(c.send(new L.UpdateFunctionConfigurationCommand({ FunctionName: "sdk-sh", Environment: { Variables: { AWS_REGION: "x" } } })),
  "InvalidParameterValueException", "reserved variable");
const v = await c.send(new L.PublishVersionCommand({ FunctionName: "sdk-sh" }));
check(v.Version === "1", "PublishVersion " + v.Version);
await c.send(new L.UpdateFunctionCodeCommand({ FunctionName: "sdk-sh", ImageUri: shell2 }));
await L.waitUntilFunctionUpdatedV2(waitOpts, { FunctionName: "sdk-sh" });
const latest = await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Payload: enc({}) }));
const one = await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Qualifier: "1", Payload: enc({}) }));
check(dec(latest.Payload).version === "2" && dec(one.Payload).version === "1" && one.ExecutedVersion === "1",
  "code update / version 1");
console.log("ok: UpdateFunctionConfiguration, reserved key refused, PublishVersion, UpdateFunctionCode seen by the next invoke, version 1 unchanged");

// Concurrency.
await c.send(new L.PutFunctionConcurrencyCommand({ FunctionName: "sdk-sh", ReservedConcurrentExecutions: 0 }));
const thr = await expectError(c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Payload: enc({}) })), "TooManyRequestsException", "throttle");
check(thr.Reason === "ReservedFunctionConcurrentInvocationLimitExceeded", "Reason " + thr.Reason);
const gc = await c.send(new L.GetFunctionConcurrencyCommand({ FunctionName: "sdk-sh" }));
check(gc.ReservedConcurrentExecutions === 0, "GetFunctionConcurrency");
await c.send(new L.DeleteFunctionConcurrencyCommand({ FunctionName: "sdk-sh" }));
await c.send(new L.InvokeCommand({ FunctionName: "sdk-sh", Payload: enc({}) }));
await c.send(new L.PublishVersionCommand({ FunctionName: "sdk-node" }));
await c.send(new L.PutProvisionedConcurrencyConfigCommand({ FunctionName: "sdk-node", Qualifier: "1", ProvisionedConcurrentExecutions: 1 }));
let ready = false;
for (let i = 0; i < 600 && !ready; i++) {
  const p = await c.send(new L.GetProvisionedConcurrencyConfigCommand({ FunctionName: "sdk-node", Qualifier: "1" }));
  ready = p.Status === "READY";
  if (!ready) await new Promise((r) => setTimeout(r, 200));
}
check(ready, "provisioned concurrency never READY");
const pv = dec((await c.send(new L.InvokeCommand({ FunctionName: "sdk-node", Qualifier: "1", Payload: enc({ env: true }) }))).Payload);
check(pv.env.AWS_LAMBDA_INITIALIZATION_TYPE === "provisioned-concurrency", "not a provisioned sandbox: " + pv.env.AWS_LAMBDA_INITIALIZATION_TYPE);
await c.send(new L.DeleteProvisionedConcurrencyConfigCommand({ FunctionName: "sdk-node", Qualifier: "1" }));
await expectError(c.send(new L.GetProvisionedConcurrencyConfigCommand({ FunctionName: "sdk-node", Qualifier: "1" })),
  "ProvisionedConcurrencyConfigNotFoundException", "deleted provisioned config");
console.log("ok: reserved concurrency 0 -> TooManyRequestsException with Reason; provisioned concurrency READY and used");

// Auth and delete.
await expectError(mk("not-the-secret").send(new L.ListFunctionsCommand({})), "InvalidSignatureException", "wrong secret");
await c.send(new L.DeleteFunctionCommand({ FunctionName: "sdk-sh" }));
await c.send(new L.DeleteFunctionCommand({ FunctionName: "sdk-node" }));
const after = await c.send(new L.ListFunctionsCommand({}));
check(after.Functions.length === 0, "functions left after delete");
console.log("ok: a wrong secret gets InvalidSignatureException (403); DeleteFunction");
