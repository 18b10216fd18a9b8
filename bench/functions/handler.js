const crypto = require("crypto"), zlib = require("zlib"), url = require("url");
const http = require("http"), util = require("util");
const body = JSON.stringify({ prices: ["1.10", "2.20"] });
const digest = crypto.createHash("sha256").update(zlib.gzipSync(body)).digest("hex");
console.log(JSON.stringify({ digest, host: new url.URL("http://example.com/x").host,
                             agent: typeof http.Agent, fmt: util.format("%d", 3) }));
