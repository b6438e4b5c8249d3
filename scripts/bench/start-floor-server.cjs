// The empty gRPC server of the start floor (start-floor.ts): plain JavaScript, so nothing but
// Node, grpc-js, TLS and HTTP/2 is timed. Argument: a directory with ca.crt, server.crt,
// server.key and port (written by the benchmark).
const { readFileSync } = require('node:fs');
const { join } = require('node:path');
const grpc = require('@grpc/grpc-js');

const dir = process.argv[2];
const read = (name) => readFileSync(join(dir, name));
const identity = (b) => b;
const server = new grpc.Server();
server.addService(
  {
    echo: {
      path: '/bench.Echo/Echo',
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  },
  { echo: (call, callback) => callback(null, call.request) },
);
const credentials = grpc.ServerCredentials.createSsl(
  read('ca.crt'),
  [{ private_key: read('server.key'), cert_chain: read('server.crt') }],
  true,
);
server.bindAsync(`127.0.0.1:${read('port').toString().trim()}`, credentials, (error) => {
  if (error !== null) throw error;
});
