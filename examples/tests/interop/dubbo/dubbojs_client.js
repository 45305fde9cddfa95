'use strict';
// A Dubbo2 consumer: dubbo2.js (npm, Apache dubbo-js) DirectlyDubbo, connected
// directly to one address (no zookeeper).
//
//   node dubbojs_client.js --addr 127.0.0.1:20880 [--count N] [--name w1]
//        [--attach k=v ...] [--timeout-ms 3000] [--interface I] [--version V] [--method M]
//        [--service-timeout MS] [--linked N]
//
// --service-timeout gives the service a timeout of its own, which dubbo2.js sends
// with each call as a `timeout` attachment whose value is an int, not a string.
// --linked passes a second argument: a linked list of N `Node` objects, each
// holding the next in its last field, nested N deep as a Java consumer sends it.
//
// Prints the same JSON lines as sofa_client.js, with "client":"dubbojs".

const { DirectlyDubbo, java } = require('dubbo2.js');
const decodeModule = require('dubbo2.js/es7/decode');
const SocketWorker = require('dubbo2.js/es7/socket-worker').default;
const hessian = require('hessian.js');
const { DUBBO_VERSION, NODE_CLASS, clientArgs, runCalls } = require('./common');

const opts = clientArgs(process.argv.slice(2));

// DirectlyDubbo builds each call's context itself and offers no way to pass
// attachments; set them on the context as it is written to the socket.
const write = SocketWorker.prototype.write;
SocketWorker.prototype.write = function writeWithAttachments(ctx) {
  ctx.attachments = opts.attachments;
  return write.call(this, ctx);
};

// dubbo2.js reports a non-OK status as the raw body bytes; keep the status and
// decode the Hessian string the error body holds.
const decode = decodeModule.decode;
decodeModule.decode = bytes => {
  const result = decode(bytes);
  const status = bytes[3];
  if (result.err && status !== 20) {
    let message = result.err.message;
    try {
      message = new hessian.DecoderV2(bytes.slice(16)).read();
    } catch (_) {
      // keep dubbo2.js's own text
    }
    result.err = Object.assign(new Error(String(message)), { dubboStatus: status });
  }
  return result;
};

const dubbo = DirectlyDubbo.from({
  dubboAddress: opts.addr,
  dubboVersion: DUBBO_VERSION,
  dubboInvokeTimeout: opts.timeoutMs / 1000,
});
// A list of `n` Node objects, the first holding the second, and so on.
function linkedList(n) {
  let next = null;
  for (let value = n - 1; value >= 0; value--) {
    next = java.combine(NODE_CLASS, { value: java.int(value), next });
  }
  return next;
}

const linked = opts.flags.linked ? Number(opts.flags.linked) : 0;
const service = dubbo.proxyService({
  dubboInterface: opts.iface,
  version: opts.version,
  timeout: opts.flags['service-timeout'] ? Number(opts.flags['service-timeout']) : undefined,
  methods: {
    [opts.method](name) {
      return linked ? [ java.String(name), linkedList(linked) ] : [ java.String(name) ];
    },
  },
});

async function callOnce() {
  const { res, err } = await service[opts.method](opts.name);
  if (err) {
    const status = err.dubboStatus === undefined ? null : err.dubboStatus;
    return { ok: false, status, message: err.message, error: err.name };
  }
  return { ok: true, reply: res };
}

runCalls('dubbojs', opts, callOnce)
  .catch(err => console.error(err))
  .then(() => process.exit(0));
