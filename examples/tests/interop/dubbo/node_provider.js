'use strict';
// A Dubbo2 provider built on sofa-rpc-node's RpcServer with the dubbo-remoting
// protocol (npm), serving DemoService:1.0.0 sayHello(String) on 127.0.0.1. A call
// with a second argument, a linked list of Node objects (dubbojs_client.js
// --linked), is greeted as `<name> and <N> linked nodes`, N the nodes it read.
//
//   node node_provider.js --port 20881 --name v1 [--record calls.log]
//
// Prints `ready <port>` once listening, and exits when its stdin closes. Names with a meaning:
//   crash       -> the handler throws: sofa answers status 80 SERVER_ERROR "boom"
//   sleep-<ms>  -> the reply is delayed by <ms> milliseconds
// Every call that arrives is appended to --record as one tab-separated line:
//   <provider> <twoway|oneway> <name> <k=v,k=v attachments>

const fs = require('fs');
const net = require('net');
const { RpcServer } = require('sofa-rpc-node').server;
const dubboRemoting = require('dubbo-remoting');
const DubboRequest = require('dubbo-remoting/lib/protocol/request');
const { DEMO_INTERFACE, DEMO_VERSION, parseArgs, attachmentPairs, providerReply } = require('./common');

// dubbo-remoting drops the two-way bit when it decodes a request; keep it so the
// provider can tell a one-way call apart (it still answers both, as the library does).
const decodeRequest = DubboRequest.decode;
DubboRequest.decode = (buf, options) => {
  const packet = decodeRequest(buf, options);
  if (packet.data && typeof packet.data === 'object') {
    packet.data.isTwoWay = (buf[2] & 0x40) !== 0;
  }
  return packet;
};

class InteropServer extends RpcServer {
  // Hands the decoded request to the service method as `this`.
  createContext(req) {
    return { req };
  }

  // RpcServer listens on every interface; tests talk to 127.0.0.1 only.
  _startServer(port) {
    const server = net.createServer();
    server.once('error', err => { this.emit('error', err); });
    server.on('connection', socket => { this._handleSocket(socket); });
    server.listen(port, '127.0.0.1');
    return server;
  }
}

const args = parseArgs(process.argv.slice(2));
const port = Number(args.port);
const provider = args.name || 'node';
const quiet = { info() {}, warn() {}, error() {}, debug() {} };

function record(twoWay, name, attachments) {
  if (!args.record) return;
  const line = [ provider, twoWay ? 'twoway' : 'oneway', name, attachmentPairs(attachments) ];
  fs.appendFileSync(args.record, line.join('\t') + '\n');
}

const server = new InteropServer({
  logger: quiet,
  port,
  protocol: dubboRemoting,
  version: DEMO_VERSION,
});

server.addService({ interfaceName: DEMO_INTERFACE, version: DEMO_VERSION }, {
  async sayHello(name, linked) {
    if (linked) {
      let nodes = 0;
      for (let node = linked; node; node = node.next) nodes++;
      name = `${name} and ${nodes} linked nodes`;
    }
    const data = this.req.data;
    const attachments = data.requestProps || {};
    record(data.isTwoWay !== false, name, attachments);
    if (name === 'crash') throw new Error('boom');
    const sleep = /^sleep-(\d+)$/.exec(name);
    if (sleep) await new Promise(resolve => setTimeout(resolve, Number(sleep[1])));
    return providerReply(name, provider, attachments);
  },
});

// Errors of single calls (unknown service...) are answered to the caller; log them only.
server.on('error', err => { console.error(`provider ${provider}: ${err.message}`); });
server.start().then(() => {
  process.stdout.write(`ready ${port}\n`);
}, err => {
  console.error(err.message);
  process.exit(2);
});

// The test holds stdin open; when it goes, so does the provider.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
