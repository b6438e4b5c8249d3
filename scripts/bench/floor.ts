/**
 * The floor under any Node gRPC server on this machine: an empty unary service (it answers each
 * request with the request) in its own process, over mutual TLS, driven by the same closed-loop
 * grpc-js load as the cluster benchmark. Whatever Coffer does per request comes on top of this,
 * so it bounds what Coffer can reach beside etcd here.
 *
 *   node --import tsx scripts/bench/floor.ts serve   (the server half; the benchmark forks it)
 */
import * as grpc from '@grpc/grpc-js';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { MANAGER_CHANNEL_OPTIONS } from '../../src/transport/tls.ts';
import { runLoad, type LoadResult } from './load.ts';

const identity = (b: Buffer): Buffer => b;
/** A unary echo of raw bytes (no protobuf): the service of both floors. */
export const ECHO_SERVICE: grpc.ServiceDefinition = {
  echo: {
    path: '/bench.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

export interface Material {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

function serve(material: Material): void {
  const server = new grpc.Server({ 'grpc.enable_channelz': 0 });
  server.addService(ECHO_SERVICE, {
    echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) =>
      callback(null, call.request),
  });
  const credentials = grpc.ServerCredentials.createSsl(
    Buffer.from(material.caPem),
    [{ private_key: Buffer.from(material.keyPem), cert_chain: Buffer.from(material.certPem) }],
    true,
  );
  server.bindAsync('127.0.0.1:0', credentials, (error, port) => {
    if (error !== null) throw error;
    process.send!(port);
  });
}

/** Requests/s, latency and CPU per request of the empty service, at each concurrency. */
export async function measureFloor(options: {
  seconds: number;
  inflights: readonly number[];
  bytes: number;
}): Promise<Array<{ inflight: number; result: LoadResult }>> {
  const nowMs = Date.now();
  const ca = createCa('bench-floor', nowMs);
  const server = issueCertificate(ca, {
    id: 'echo',
    role: 'manager',
    clusterId: 'bench-floor',
    nowMs,
    hosts: ['127.0.0.1'],
  });
  const client = issueCertificate(ca, { id: 'bench', role: 'client', clusterId: 'bench-floor', nowMs });
  const child = fork(fileURLToPath(import.meta.url), ['serve'], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m) => resolve(m as number));
      child.once('exit', (code) => reject(new Error(`the echo server exited (${code})`)));
      child.send({ caPem: ca.certPem, certPem: server.certPem, keyPem: server.keyPem });
    });
    const Client = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'Echo');
    const stub = new Client(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
        checkServerIdentity: () => undefined,
      }),
      MANAGER_CHANNEL_OPTIONS,
    ) as unknown as {
      echo(request: Buffer, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void;
      close(): void;
    };
    const payload = Buffer.alloc(options.bytes, 7);
    const echo = (): Promise<void> =>
      new Promise((resolve, reject) =>
        stub.echo(payload, { deadline: Date.now() + 10_000 }, (error) => (error === null ? resolve() : reject(error))),
      );
    const pids = () => [child.pid];
    await runLoad({ inflight: 64, seconds: 3, op: echo, pids }); // warm-up, as for the clusters
    const results: Array<{ inflight: number; result: LoadResult }> = [];
    for (const inflight of options.inflights)
      results.push({ inflight, result: await runLoad({ inflight, seconds: options.seconds, op: echo, pids }) });
    stub.close();
    return results;
  } finally {
    child.kill('SIGKILL');
  }
}

if (process.argv[2] === 'serve') process.once('message', (material) => serve(material as Material));
