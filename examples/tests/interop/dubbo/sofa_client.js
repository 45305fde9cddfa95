'use strict';
// A Dubbo2 consumer: sofa-rpc-node's RpcClient with the dubbo-remoting protocol
// (npm), connected directly to one address (no registry).
//
//   node sofa_client.js --addr 127.0.0.1:20880 [--count N] [--name w1]
//        [--attach k=v ...] [--timeout-ms 3000] [--interface I] [--version V] [--method M]
//
// Prints one JSON line per call: {"client":"sofa","call":0,"ok":true,"reply":...}
// (plus "response_attachments":"k=v,..." when the reply carried any)
// or {"ok":false,"status":60,"message":...} (status null when no reply came),
// then {"client":"sofa","done":true,"failures":N}.

const { RpcClient } = require('sofa-rpc-node').client;
const dubboRemoting = require('dubbo-remoting');
const DubboResponse = require('dubbo-remoting/lib/protocol/response');
const { DUBBO_VERSION, clientArgs, attachmentPairs, runCalls } = require('./common');

// dubbo-remoting turns a non-OK status into a bare Error; keep the status so
// the test can check which Dubbo status the proxy answered.
const decodeResponse = DubboResponse.decode;
DubboResponse.decode = (buf, options) => {
  const packet = decodeResponse(buf, options);
  if (packet.data && packet.data.error) packet.data.error.dubboStatus = buf[3];
  return packet;
};

const opts = clientArgs(process.argv.slice(2));
const quiet = { info() {}, warn() {}, error() {}, debug() {} };
const client = new RpcClient({ logger: quiet, protocol: dubboRemoting });
const consumer = client.createConsumer({
  interfaceName: opts.iface,
  version: opts.version,
  serverHost: `dubbo://${opts.addr}`,
  responseTimeout: opts.timeoutMs,
});

// The response attachments (result flags 3/4/5) are not returned by invoke().
let lastResponseProps = null;
consumer.use(async (ctx, next) => {
  await next();
  lastResponseProps = ctx.res && ctx.res.responseProps;
});

async function callOnce() {
  lastResponseProps = null;
  try {
    const reply = await consumer.invoke(opts.method, [ opts.name ], {
      requestProps: Object.assign({ dubbo: DUBBO_VERSION, group: '' }, opts.attachments),
      responseTimeout: opts.timeoutMs,
    });
    const result = { ok: true, reply };
    if (lastResponseProps) result.response_attachments = attachmentPairs(lastResponseProps);
    return result;
  } catch (err) {
    const status = err.dubboStatus === undefined ? null : err.dubboStatus;
    return { ok: false, status, message: err.message, error: err.name };
  }
}

runCalls('sofa', opts, callOnce)
  .catch(err => console.error(err))
  .then(() => process.exit(0));
