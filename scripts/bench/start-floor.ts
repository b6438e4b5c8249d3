/**
 * The floor under a manager's restart on this machine: an empty grpc-js server over mutual TLS
 * (scripts/bench/start-floor-server.cjs, plain JavaScript), timed from the spawn of its process to
 * its first answer, polled as the scale benchmark polls a restarted manager (every 20 ms, a new
 * connection each try). Node's own start, loading grpc-js, TLS and HTTP/2 are in it; nothing of
 * Coffer is. A Coffer restart is this floor plus what Coffer does at start.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { MANAGER_CHANNEL_OPTIONS } from '../../src/transport/tls.ts';
import { ECHO_SERVICE } from './floor.ts';

const SERVER = fileURLToPath(new URL('./start-floor-server.cjs', import.meta.url));
const POLL_MS = 20;
const ANSWER_WAIT_MS_MAX = 30_000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** Milliseconds from spawn to first answer, `runs` times (each a fresh process). */
export async function measureStartFloor(runs = 5): Promise<number[]> {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-start-floor-'));
  const nowMs = Date.now();
  const ca = createCa('bench-start-floor', nowMs);
  const server = issueCertificate(ca, { id: 'echo', role: 'manager', clusterId: 'bench-start-floor', nowMs });
  const client = issueCertificate(ca, { id: 'bench', role: 'client', clusterId: 'bench-start-floor', nowMs });
  writeFileSync(join(dir, 'ca.crt'), ca.certPem);
  writeFileSync(join(dir, 'server.crt'), server.certPem);
  writeFileSync(join(dir, 'server.key'), server.keyPem, { mode: 0o600 });
  const Client = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'Echo');
  const times: number[] = [];
  try {
    for (let run = 0; run < runs; run++) {
      const port = await freePort();
      writeFileSync(join(dir, 'port'), String(port));
      const startedAt = performance.now();
      const child = spawn(process.execPath, [SERVER, dir], { stdio: ['ignore', 'ignore', 'inherit'] });
      try {
        for (;;) {
          if (performance.now() - startedAt > ANSWER_WAIT_MS_MAX)
            throw new Error('the empty gRPC server never answered');
          const stub = new Client(
            `127.0.0.1:${port}`,
            grpc.credentials.createSsl(
              Buffer.from(ca.certPem),
              Buffer.from(client.keyPem),
              Buffer.from(client.certPem),
              { checkServerIdentity: () => undefined },
            ),
            MANAGER_CHANNEL_OPTIONS,
          ) as unknown as {
            echo(request: Buffer, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void;
            close(): void;
          };
          const answered = await new Promise<boolean>((resolve) =>
            stub.echo(Buffer.from('x'), { deadline: Date.now() + 1000 }, (error) => resolve(error === null)),
          );
          stub.close();
          if (answered) break;
          await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        }
        times.push(performance.now() - startedAt);
      } finally {
        child.kill('SIGKILL');
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return times;
}
