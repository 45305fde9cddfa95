'use strict';
// Shared by the Node interop scripts: the command line, the demo service's
// names, the reply format the providers use and the JSON lines the clients print.
// examples/tests/dubbo_interop.rs reads these formats; keep them in step.

const DEMO_INTERFACE = 'org.apache.dubbo.samples.basic.api.DemoService';
const DEMO_VERSION = '1.0.0';
const DUBBO_VERSION = '2.0.2';
// The class of the linked list dubbojs_client.js's --linked passes.
const NODE_CLASS = 'org.apache.dubbo.samples.basic.api.Node';

// Parses `--key value` pairs; `--attach k=v` may repeat; flags listed in
// `booleans` take no value.
function parseArgs(argv, booleans = []) {
  const args = { attach: {} };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (booleans.includes(key)) {
      args[key] = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`missing value for --${key}`);
    if (key === 'attach') {
      const eq = value.indexOf('=');
      if (eq <= 0) throw new Error(`--attach wants k=v, got ${value}`);
      args.attach[value.slice(0, eq)] = value.slice(eq + 1);
    } else {
      args[key] = value;
    }
  }
  return args;
}

function clientArgs(argv, booleans = []) {
  const args = parseArgs(argv, booleans);
  if (!args.addr) throw new Error('--addr host:port is required');
  const [host, port] = args.addr.split(':');
  return {
    host,
    port: Number(port),
    addr: args.addr,
    count: Number(args.count || 1),
    name: args.name || 'w1',
    attachments: args.attach,
    timeoutMs: Number(args['timeout-ms'] || 3000),
    iface: args.interface || DEMO_INTERFACE,
    version: args.version || DEMO_VERSION,
    method: args.method || 'sayHello',
    flags: args,
  };
}

// Attachments as sorted `k=v` joined by commas (common.py writes the same).
function attachmentPairs(attachments) {
  return Object.keys(attachments || {}).sort()
    .map(k => `${k}=${attachments[k]}`)
    .join(',');
}

// The provider's answer names the provider and every attachment it received,
// so a test can check routing and mutation.
function providerReply(name, provider, attachments) {
  return `Hello, ${name} from ${provider} attachments=${attachmentPairs(attachments)}`;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// A hard stop so a client never hangs, whatever its library does.
function watchdog(ms, client) {
  const timer = setTimeout(() => {
    emit({ client, done: false, error: `watchdog: no completion in ${ms}ms` });
    process.exit(3);
  }, ms);
  timer.unref();
}

async function runCalls(client, opts, callOnce) {
  watchdog(opts.count * opts.timeoutMs + 10000, client);
  let failures = 0;
  for (let call = 0; call < opts.count; call++) {
    const start = Date.now();
    const result = await callOnce(call);
    if (!result.ok) failures++;
    emit(Object.assign({ client, call }, result, { ms: Date.now() - start }));
  }
  emit({ client, done: true, failures });
}

module.exports = {
  DEMO_INTERFACE, DEMO_VERSION, DUBBO_VERSION, NODE_CLASS,
  parseArgs, clientArgs, attachmentPairs, providerReply, emit, runCalls,
};
