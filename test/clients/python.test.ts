import { test } from 'node:test';
import assert from 'node:assert/strict';
import { status as grpcStatus } from '@grpc/grpc-js';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type Server } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { createCa, identityOf, issueCertificate } from '../../src/crypto/pki.ts';
import { AdminClient, Processes, coffer, eventually, freePort } from '../processes/processes.ts';

// Coffer's API is plain gRPC over mutual TLS: a client in another language must work with its
// standard library, which checks the manager's host name. This test runs the Python example
// (examples/python/coffer_client.py, grpcio and protoc-generated messages) against every manager
// of a real three-manager cluster, dialling localhost with host-name checks on, and then as an
// attacker would use it: client certificates of another cluster's CA and of a forged CA with the
// cluster CA's name, an impostor server with the forged CA's certificate for localhost, and one
// with a client identity named "localhost".

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const EXAMPLE = join(REPO, 'examples/python/coffer_client.py');
/** What a machine needs for this test, said whenever something is missing: it never skips. */
const INSTALL =
  'install them: apt-get install python3-grpcio python3-protobuf protobuf-compiler (Debian; .ci/run does it when they are missing), or pip install grpcio protobuf and protoc from your package manager';
/** One run of the example: a few calls, each with a 10 s deadline. */
const PYTHON_RUN_TIMEOUT_MS = 60_000;

/**
 * A python3 that imports grpc and protobuf: $COFFER_PYTHON, else python3 on PATH, else Debian's
 * /usr/bin/python3 (where python3-grpcio installs them, while a pyenv python3 may come first on PATH).
 */
function findPython(): string {
  const candidates = [process.env['COFFER_PYTHON'], 'python3', '/usr/bin/python3'].filter(
    (c): c is string => c !== undefined && c !== '',
  );
  for (const python of candidates) {
    const probe = spawnSync(python, ['-c', 'import grpc, google.protobuf'], { timeout: 30_000 });
    if (probe.status === 0) return python;
  }
  throw new Error(
    `the Python client test needs python3 with the grpc and protobuf modules; none of ${candidates.join(', ')} imports them: ${INSTALL}`,
  );
}

/** Generates coffer/v1/api_pb2.py into `dir` with protoc, as examples/python/README.md tells users to. */
function generateMessages(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const made = spawnSync(
    'protoc',
    ['-I', join(REPO, 'proto'), `--python_out=${dir}`, join(REPO, 'proto/coffer/v1/api.proto')],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (made.error !== undefined)
    throw new Error(`the Python client test needs protoc (${(made.error as NodeJS.ErrnoException).code}): ${INSTALL}`);
  assert.equal(made.status, 0, `protoc failed: ${made.stderr}`);
}

interface Identity {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

/** Runs the example against `address` as `identity`, bounded in time (killed after PYTHON_RUN_TIMEOUT_MS). */
function runExample(
  python: string,
  generated: string,
  identity: Identity,
  address: string,
  secretName: string,
  serverName?: string,
  forbiddenName?: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      python,
      [EXAMPLE, address, secretName, ...(forbiddenName === undefined ? [] : [forbiddenName])],
      {
        env: {
          ...process.env,
          PYTHONPATH: generated,
          PYTHONDONTWRITEBYTECODE: '1',
          COFFER_CA: identity.ca,
          COFFER_CERT: identity.cert,
          COFFER_KEY: identity.key,
          ...(serverName === undefined ? {} : { COFFER_SERVER_NAME: serverName }),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: PYTHON_RUN_TIMEOUT_MS,
        killSignal: 'SIGKILL',
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * A TLS server that answers with `cert` for any name and counts handshakes: completed ones (the
 * client accepted the certificate) and refused ones. It speaks no gRPC: a client that accepted
 * its certificate would fail later, so the count, not the client's error, shows the refusal.
 */
async function impostor(cert: { certPem: string; keyPem: string }): Promise<{
  server: Server;
  port: number;
  handshakes: { completed: number; refused: number };
}> {
  const handshakes = { completed: 0, refused: 0 };
  const server = createServer({ cert: cert.certPem, key: cert.keyPem, ALPNProtocols: ['h2'] }, (socket) => {
    handshakes.completed++;
    socket.destroy();
  });
  server.on('tlsClientError', () => handshakes.refused++);
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { server, port, handshakes };
}

test('the Python example client (grpcio, protoc messages, host names checked) puts, gets, lists, reads versions and compares-and-sets on every manager at localhost; certificates of another CA, an impostor manager and a client certificate posing as a manager are refused', {
  timeout: 300_000,
}, async () => {
  // Missing tools fail here, with what to install: before anything starts.
  const python = findPython();
  const root = mkdtempSync(join(tmpdir(), 'coffer-python-'));
  const procs = new Processes(root);
  let admin: AdminClient | null = null;
  const servers: Server[] = [];
  try {
    const generated = join(root, 'gen');
    generateMessages(generated);
    const ports = [await freePort(), await freePort(), await freePort()];
    const address = (k: number) => `127.0.0.1:${ports[k]}`;
    const data = (k: number) => join(root, `m${k + 1}`);
    const tokenFile = join(root, 'join-token');
    const init = await coffer([
      'init',
      '--data',
      data(0),
      '--listen',
      address(0),
      '--token-file',
      tokenFile,
      '--output',
      'json',
    ]);
    assert.equal(init.code, 0, init.stderr);
    const { clusterId, adminDir } = JSON.parse(init.stdout) as { clusterId: string; adminDir: string };
    admin = new AdminClient(adminDir, clusterId);
    const client = admin;
    procs.start('m1', ['server', '--data', data(0)]);
    await eventually('manager 1 to lead', 30_000, async () =>
      (await client.status(address(0))).role === 'leader' ? true : undefined,
    );
    // m2 by `coffer join`, m3 by `coffer server --join` (compose's way): each asks for a name of its own.
    procs.start('m2', [
      ...['join', '--data', data(1), '--listen', address(1), '--join', address(0)],
      ...['--token-file', tokenFile, '--san', 'm2.coffer.test'],
    ]);
    await eventually('manager 2 to become a voter', 60_000, async () =>
      (await client.status(address(0))).voters.length === 2 ? true : undefined,
    );
    procs.start('m3', [
      ...['server', '--data', data(2), '--listen', address(2), '--join', address(0)],
      ...['--token-file', tokenFile, '--san', 'm3.coffer.test'],
    ]);
    await eventually('three voters', 60_000, async () => {
      const s = await client.status(address(0));
      return s.voters.length === 3 && s.learners.length === 0 ? true : undefined;
    });
    // The example does not retry: every manager must serve linearizable reads first (NOT_FOUND
    // for a name nobody wrote is an answer; UNAVAILABLE is not).
    for (let k = 0; k < 3; k++)
      await eventually(`manager ${k + 1} to serve reads`, 30_000, async () =>
        client.call(address(k), 'Secrets', 'get', { name: 'python/absent' }).then(
          () => true,
          (error: { code?: number }) => (error.code === grpcStatus.NOT_FOUND ? true : Promise.reject(error)),
        ),
      );

    // An identity of its own for the Python client, allowed what the example does under python/.
    const adminEnv = {
      COFFER_ADDR: address(0),
      COFFER_CA: join(adminDir, 'ca.crt'),
      COFFER_CERT: join(adminDir, 'admin.crt'),
      COFFER_KEY: join(adminDir, 'admin.key'),
    };
    writeFileSync(
      join(root, 'python-app.json'),
      JSON.stringify([{ path: 'python/**', capabilities: ['read', 'write', 'list'] }]),
    );
    const policy = await coffer(['policy', 'put', 'python-app', '--file', join(root, 'python-app.json')], '', adminEnv);
    assert.equal(policy.code, 0, policy.stderr);
    const out = join(root, 'python-app');
    const issued = await coffer(
      ['identity', 'issue', 'python-app', '--policy', 'python-app', '--out', out],
      '',
      adminEnv,
    );
    assert.equal(issued.code, 0, issued.stderr);
    const identity: Identity = {
      ca: join(out, 'ca.crt'),
      cert: join(out, 'python-app.crt'),
      key: join(out, 'python-app.key'),
    };

    // Every manager, dialled as localhost: a follower forwards the writes and answers the reads.
    for (let k = 0; k < 3; k++) {
      const name = `python/m${k + 1}/greeting`;
      const forbidden = `elsewhere/m${k + 1}`;
      const run = await runExample(python, generated, identity, `localhost:${ports[k]}`, name, undefined, forbidden);
      assert.equal(run.code, 0, `manager ${k + 1} at localhost:${ports[k]}: ${run.stderr}`);
      const lines = run.stdout.trimEnd().split('\n');
      assert.deepEqual(lines.slice(0, 7), [
        `put ${name}: version 1`,
        `get ${name}: 'hello from python' (version 1)`,
        'cas put at version 1: version 2',
        `cas put at version 1: refused, FAILED_PRECONDITION: secret "${name}" is at version 2, not 1`,
        `versions of ${name}: 1, 2`,
        `list python/m${k + 1}/: ${name}`,
        `get ${name}: 'updated from python' (version 2)`,
      ]);
      // Refusals reach Python with their status and their reason (the coffer-error-reason trailer).
      assert.match(lines[7] ?? '', new RegExp(`^get ${name}-missing: refused, NOT_FOUND \\(SECRET_NOT_FOUND\\): `));
      assert.match(
        lines[8] ?? '',
        new RegExp(`^put ${forbidden}: refused, PERMISSION_DENIED \\(POLICY_DENIED\\): .*may not write`),
      );
      assert.equal(lines.length, 9, run.stdout);
    }
    // What Python wrote, Node reads: the same secrets, on another manager.
    const written = await client.call<{ value: Buffer; version: number }>(address(2), 'Secrets', 'get', {
      name: 'python/m1/greeting',
    });
    assert.deepEqual([written.value.toString(), written.version], ['updated from python', 2]);

    // A name given with --san works for its manager (dialled by IP, checked against the name),
    // and only for it: m3's name is not in m2's certificate, and an unlisted name is in none.
    const byName = await runExample(python, generated, identity, address(1), 'python/by-name', 'm2.coffer.test');
    assert.equal(byName.code, 0, byName.stderr);
    for (const [k, serverName] of [
      [1, 'm3.coffer.test'],
      [0, 'not-listed.coffer.test'],
    ] as const) {
      const refused = await runExample(python, generated, identity, address(k), 'python/never', serverName);
      assert.equal(refused.code, 1, `${serverName} at manager ${k + 1} must be refused: ${refused.stdout}`);
      assert.match(refused.stderr, /^error: UNAVAILABLE: /m);
      assert.equal(refused.stdout, '', 'nothing was done');
    }

    // The attacker's side. A client certificate from another cluster's CA is refused by the
    // manager before any handler runs.
    const otherCluster = 'another-cluster';
    const otherCa = createCa(otherCluster, Date.now());
    const other = issueCertificate(otherCa, {
      id: 'admin',
      role: 'client',
      clusterId: otherCluster,
      nowMs: Date.now(),
    });
    // A forger's CA with this cluster's CA's very name (its subject), for this cluster's id and the
    // admin's name: only the signature tells it apart.
    const forgedCa = createCa(clusterId, Date.now());
    const forged = issueCertificate(forgedCa, { id: 'admin', role: 'client', clusterId, nowMs: Date.now() });
    for (const [what, cert, refusal] of [
      // The clean refusal: UNAUTHENTICATED, before the handler runs.
      [
        "another cluster's CA",
        other,
        /^error: UNAUTHENTICATED: a certificate issued by this cluster's CA is required/m,
      ],
      // With the same issuer name, OpenSSL's failed signature check on the manager leaves an error
      // behind that ends that TLS connection once the handshake is done (Node 20; the refusal is
      // logged by grpc-js's trace only): the client sees the connection closed, not the status.
      // Refused either way; a later Node may answer UNAUTHENTICATED.
      ["a forged CA of the cluster CA's name", forged, /^error: (UNAUTHENTICATED|UNAVAILABLE): /m],
    ] as const) {
      const file = what.replace(/[^a-z]+/g, '-');
      writeFileSync(join(root, `${file}.crt`), cert.certPem);
      writeFileSync(join(root, `${file}.key`), cert.keyPem, { mode: 0o600 });
      const as = { ...identity, cert: join(root, `${file}.crt`), key: join(root, `${file}.key`) };
      const run = await runExample(python, generated, as, `localhost:${ports[0]}`, `python/${file}`);
      assert.equal(run.code, 1, `${what}: ${run.stdout}`);
      assert.match(run.stderr, refusal, what);
      assert.equal(run.stdout, '', `${what}: nothing was done`);
      await assert.rejects(
        client.call(address(0), 'Secrets', 'get', { name: `python/${file}` }),
        (error: { code?: number }) => error.code === grpcStatus.NOT_FOUND,
        `${what}: nothing was written`,
      );
    }

    // An impostor at localhost with a manager certificate that names localhost, from the forged CA
    // of the cluster CA's name: the Python client checks the signature, so the handshake never completes.
    const impostorCert = issueCertificate(forgedCa, {
      id: '1',
      role: 'manager',
      clusterId,
      nowMs: Date.now(),
      hosts: ['127.0.0.1', 'localhost'],
    });
    // A client identity of the cluster's own CA named "localhost": its certificate's CN is
    // localhost and it has no subjectAltName, so a host-name check that fell back to the CN would
    // pass. It is not a server certificate (extKeyUsage clientAuth only): refused all the same.
    const posing = await coffer(
      ['identity', 'issue', 'localhost', '--policy', 'python-app', '--out', join(root, 'posing')],
      '',
      adminEnv,
    );
    assert.equal(posing.code, 0, posing.stderr);
    const posingCert = {
      certPem: readFileSync(join(root, 'posing', 'localhost.crt'), 'utf8'),
      keyPem: readFileSync(join(root, 'posing', 'localhost.key'), 'utf8'),
    };
    assert.equal(identityOf(posingCert.certPem).role, 'client');
    for (const [what, cert] of [
      ["a forged CA's manager certificate for localhost", impostorCert],
      ['a client identity named localhost', posingCert],
    ] as const) {
      const fake = await impostor(cert);
      servers.push(fake.server);
      const run = await runExample(python, generated, identity, `localhost:${fake.port}`, 'python/impostor');
      assert.equal(run.code, 1, `${what}: ${run.stdout}`);
      assert.match(run.stderr, /^error: UNAVAILABLE: /m, what);
      assert.equal(fake.handshakes.completed, 0, `${what}: the Python client completed a handshake`);
      assert.ok(fake.handshakes.refused > 0, `${what}: the Python client refused the handshake`);
    }
  } finally {
    admin?.close();
    for (const server of servers) server.close();
    await procs.killAll();
    rmSync(root, { recursive: true, force: true });
  }
});
