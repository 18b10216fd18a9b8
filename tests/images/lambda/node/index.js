// The handler of kindling's Node.js Lambda test image (tests/images/README.md).
// It runs under aws-lambda-ric, AWS's Node.js runtime interface client, which
// polls the Runtime API named by AWS_LAMBDA_RUNTIME_API.
//
// Every invocation answers
//   {"echo": EVENT, "count": N, "pid": PID, "version": "1"}
// where N counts the invocations this process has served (1 on a cold start,
// and one more on each warm one), PID is the runtime's process id (the same
// for every warm invocation of one sandbox) and version is the image's code
// version (/var/task/version.txt: "1", or "2" in the tag that changes only
// the code).  An object EVENT may ask for more, in this order:
//   {"stdout": "text"}     writes text and a newline to stdout, unformatted
//   {"stderr": "text"}     the same on stderr
//   {"log": "text"}        console.log(text), formatted by the runtime
//   {"alloc_mb": N}        allocates N MiB, touches every page, holds it until
//                          the answer is sent; the answer gains "allocated_mb"
//   {"sleep_ms": N}        waits N ms before answering
//   {"exit": CODE}         the runtime process exits with CODE mid-invocation
//   {"fail": "message"}    the handler throws an Error (errorType "Error", or
//                          "error_type" if the event names one)
//   {"env": true}          the answer gains "env": the whole process.env
//   {"context": true}      the answer gains "context": the request id, function
//                          ARN, name, version, memory, log group and stream,
//                          and the remaining time in ms
// TEST_INIT_MODE in the environment makes the module itself fail to load:
// "error" throws (the runtime posts /runtime/init/error), "exit" exits 3,
// "hang" blocks for 600 s without asking for work.
"use strict";

const fs = require("fs");
const path = require("path");

switch (process.env.TEST_INIT_MODE || "") {
  case "":
    break;
  case "error":
    throw new Error("init failed: TEST_INIT_MODE=error");
  case "exit":
    process.exit(3);
  case "hang":
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 600000);
    break;
  default:
    throw new Error("unknown TEST_INIT_MODE " + JSON.stringify(process.env.TEST_INIT_MODE));
}

const version = fs.readFileSync(path.join(__dirname, "version.txt"), "utf8").trim();
let count = 0;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.handler = async (event, context) => {
  count += 1;
  const ask = event !== null && typeof event === "object" && !Array.isArray(event) ? event : {};
  const out = { echo: event, count, pid: process.pid, version };

  if (typeof ask.stdout === "string") process.stdout.write(ask.stdout + "\n");
  if (typeof ask.stderr === "string") process.stderr.write(ask.stderr + "\n");
  if (typeof ask.log === "string") console.log(ask.log);

  let held = null;
  if (Number.isInteger(ask.alloc_mb) && ask.alloc_mb > 0) {
    held = Buffer.alloc(ask.alloc_mb * 1048576, 0x5a); // filled, so every page is resident
    out.allocated_mb = held.length / 1048576;
  }
  if (Number.isInteger(ask.sleep_ms) && ask.sleep_ms > 0) await sleep(ask.sleep_ms);
  if (Number.isInteger(ask.exit)) process.exit(ask.exit);
  if (typeof ask.fail === "string") {
    const err = new Error(ask.fail);
    if (typeof ask.error_type === "string") err.name = ask.error_type;
    throw err;
  }
  if (ask.env === true) out.env = { ...process.env };
  if (ask.context === true) {
    out.context = {
      awsRequestId: context.awsRequestId,
      invokedFunctionArn: context.invokedFunctionArn,
      functionName: context.functionName,
      functionVersion: context.functionVersion,
      memoryLimitInMB: context.memoryLimitInMB,
      logGroupName: context.logGroupName,
      logStreamName: context.logStreamName,
      remainingTimeInMillis: context.getRemainingTimeInMillis(),
    };
  }
  if (held !== null && held[held.length - 1] !== 0x5a) throw new Error("allocation lost");
  return out;
};
