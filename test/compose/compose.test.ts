import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity, connect } from 'node:tls';
import { identityOf } from '../../src/crypto/pki.ts';
import { AdminClient, eventually } from '../processes/processes.ts';
import { ComposeRun, HOST_ADDRESS, REPO, loadCompose, type ComposeModel } from './compose-harness.ts';

const COMPOSE = { text: readFileSync(join(REPO, 'docker-compose.yml'), 'utf8'), dir: REPO };
const AUTOLOCK = readFileSync(join(REPO, 'docker-compose.autolock.yml'), 'utf8');
const MANAGERS = ['m1', 'm2', 'm3'];
const UP_TIMEOUT_MS = 120_000;

/** Secrets for a run, made by the script the README tells operators to run, in the temp dir. */
function makeSecrets(root: string): void {
  execFileSync('sh', [join(REPO, 'scripts/compose-secrets.sh'), join(root, 'secrets'), '5'], { stdio: 'pipe' });
}

/** Everything that would be key material: the secret files' bytes in any encoding, tokens, PEM keys. */
function assertNoSecretMaterial(model: ComposeModel, text: string, where: string): void {
  assert.doesNotMatch(
    text,
    /CFRTKN-|CFRKEY-|CFRREC-|PRIVATE KEY/,
    `${where} holds a join token, an unlock key, a recovery key or a private key`,
  );
  for (const [name, file] of model.secretFiles) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch {
      continue;
    }
    for (const encoded of [
      bytes.toString('hex'),
      bytes.toString('base64'),
      bytes.toString('base64url'),
      bytes.toString('latin1'),
    ]) {
      assert.ok(!text.includes(encoded), `${where} holds the contents of secret ${name}`);
    }
  }
}

test('docker-compose.yml and cluster/Dockerfile: managers with healthchecks, restart policies, published ports, key files as secrets, nothing secret in the environment or the image', () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-static-'));
  try {
    makeSecrets(root);
    const model = loadCompose(COMPOSE, root, { profiles: ['five'] });
    assert.deepEqual([...model.services.keys()], ['init', 'm1', 'm2', 'm3', 'm4', 'm5']);
    assert.deepEqual(model.entrypoint, ['coffer']);
    const published = new Set<number>();
    for (const [name, service] of model.services) {
      const env = JSON.stringify(service.raw.environment);
      assertNoSecretMaterial(model, env, `the environment of ${name}`);
      assertNoSecretMaterial(model, JSON.stringify(service.raw.command), `the command of ${name}`);
      for (const variable of Object.keys(service.raw.environment)) {
        if (/KEY|TOKEN|SECRET|PASSWORD/i.test(variable))
          assert.match(service.raw.environment[variable]!, /^\//, `${name}: ${variable} must be a path, not the value`);
      }
      assert.ok(!service.raw.command.includes('--token'), `${name} must read the join token from a file, not argv`);
      if (name === 'init') {
        assert.equal(service.oneShot, true, 'init runs once');
        continue;
      }
      assert.equal(service.restart, 'unless-stopped', name);
      assert.deepEqual(
        service.raw.healthcheck?.slice(0, 3),
        ['CMD', 'coffer', 'health'],
        `${name} is checked by coffer health`,
      );
      assert.equal(service.ports.length, 1, `${name} publishes its client port`);
      const port = service.ports[0]!;
      assert.equal(port.target, 7400);
      assert.ok(!published.has(port.published), `port ${port.published} is published twice`);
      published.add(port.published);
      assert.ok(
        service.secrets.length === 1 && [...service.mounts.keys()].some((target) => target.startsWith('/run/secrets/')),
        `${name} gets its key file as a secret`,
      );
      assert.ok(service.raw.command.includes('--key-file'), `${name} is told where its key file is`);
    }
    // Every manager's certificate names localhost and 127.0.0.1, so clients that check host names
    // reach the published ports from the host; init makes m1's, the others' joins make theirs.
    // The autolock file replaces the commands whole, so it is checked too.
    const autolock = loadCompose(COMPOSE, root, { profiles: ['five'], overrides: [AUTOLOCK] });
    for (const [file, services] of [
      ['docker-compose.yml', model.services],
      ['docker-compose.autolock.yml', autolock.services],
    ] as const) {
      for (const [name, service] of services) {
        if (name === 'm1') continue;
        const sans = service.raw.command.flatMap((arg, k, all) => (all[k - 1] === '--san' ? [arg] : []));
        assert.deepEqual(
          sans,
          ['localhost', '127.0.0.1'],
          `${file}: ${name}'s certificate names localhost and 127.0.0.1`,
        );
      }
    }
    const dockerfile = readFileSync(join(REPO, 'cluster/Dockerfile'), 'utf8');
    assert.match(dockerfile, /^FROM node:20-slim$/m);
    assert.match(dockerfile, /^USER node$/m, 'the manager runs as a non-root user');
    assert.match(dockerfile, /npm ci --omit=dev/);
    assert.doesNotMatch(
      dockerfile,
      /^(ENV|ARG)\s+\S*(KEY|TOKEN|SECRET|PASSWORD)/im,
      "no secret in the image's environment",
    );
    assert.doesNotMatch(dockerfile, /COPY\s+(\.|secrets)\s/, 'the image copies only what it needs');
    assert.match(readFileSync(join(REPO, '.dockerignore'), 'utf8'), /^secrets$/m);
    assert.match(readFileSync(join(REPO, '.gitignore'), 'utf8'), /^\/secrets\/$/m);
    // The script never overwrites a key file.
    const before = readFileSync(join(root, 'secrets', 'm1.key'));
    assert.equal(before.byteLength, 32);
    assert.deepEqual(readdirSync(join(root, 'secrets')).sort(), [
      'm1.key',
      'm2.key',
      'm3.key',
      'm4.key',
      'm5.key',
      'unlock.key',
    ]);
    makeSecrets(root);
    assert.deepEqual(readFileSync(join(root, 'secrets', 'm1.key')), before);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/**
 * A TLS handshake with `address` as a standard client makes it: trusting `caPem` and checking the
 * certificate against `name` (a DNS name or an IP address) with Node's default check.
 */
function standardHandshake(address: string, caPem: string, name: string): Promise<'ok' | string> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  return new Promise((resolve) => {
    const socket = connect(
      {
        host,
        port,
        ca: caPem,
        ALPNProtocols: ['h2'],
        ...(isIP(name) === 0 ? { servername: name } : {}),
        checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
      },
      () => {
        socket.destroy();
        resolve('ok');
      },
    );
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/**
 * `docker compose up --wait`, the checks, `stop`, and `up` again, as local processes; `check` adds
 * what a variant must also hold (with the admin client and the published addresses), after each up.
 */
async function upTwice(
  overrides: readonly string[],
  check: (client: AdminClient, published: string[], round: number, caPem: string) => Promise<void>,
): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'coffer-compose-'));
  let run: ComposeRun | null = null;
  let admin: AdminClient | null = null;
  try {
    makeSecrets(root);
    const model = loadCompose(COMPOSE, root, { overrides });
    assert.deepEqual([...model.services.keys()], ['init', ...MANAGERS], 'the five-manager profile is off by default');
    run = new ComposeRun(model, join(root, 'logs-1'));
    const started = Date.now();
    await run.up(UP_TIMEOUT_MS, { wait: true });
    const first = run;
    for (const name of MANAGERS) assert.equal((await first.healthcheck(name)).code, 0, `the healthcheck of ${name}`);
    const upMs = Date.now() - started;

    // The operator's view: the admin identity from the shared volume, managers at the published ports.
    const adminDir = join(model.volumeDirs.get('shared')!, 'admin');
    admin = new AdminClient(adminDir, identityOf(readFileSync(join(adminDir, 'admin.crt'), 'utf8')).clusterId);
    const client = admin;
    const published = MANAGERS.map((name) => `${HOST_ADDRESS}:${model.services.get(name)!.ports[0]!.published}`);
    const voters = await eventually('three voters and no learner', 60_000, async () => {
      const s = await client.status(published[0]!);
      return s.voters.length === 3 && s.learners.length === 0 ? [...s.voters].sort() : undefined;
    });
    for (const address of published) assert.deepEqual([...(await client.status(address)).voters].sort(), voters);
    await client.call(published[1]!, 'Secrets', 'put', {
      name: 'app/db/password',
      value: Buffer.from('compose-value-1'),
    });
    for (const address of [published[2]!, published[0]!]) {
      const got = await client.call<{ value: Buffer }>(address, 'Secrets', 'get', { name: 'app/db/password' });
      assert.equal(got.value.toString(), 'compose-value-1', `read at ${address}`);
    }
    for (const name of run.model.services.keys()) assertNoSecretMaterial(model, run.log(name), `the log of ${name}`);
    assert.match(
      readFileSync(join(model.volumeDirs.get('shared')!, 'recovery-key'), 'utf8'),
      /^CFRREC-1-/,
      'init wrote the recovery key to the shared volume, not its log',
    );
    const caPem = readFileSync(join(adminDir, 'ca.crt'), 'utf8');
    await check(client, published, 1, caPem);

    // docker compose stop, then up again: init finds the cluster and does nothing; m2 and m3 serve
    // what they hold instead of joining again; no member is added.
    await run.down();
    run = new ComposeRun(model, join(root, 'logs-2'));
    await run.up(UP_TIMEOUT_MS, { wait: true });
    const second = run;
    assert.match(second.log('init'), /already holds a manager: nothing to do/);
    for (const name of MANAGERS) {
      assert.equal((await second.healthcheck(name)).code, 0, `the healthcheck of ${name} after the restart`);
      assert.doesNotMatch(second.log(name), /joined cluster/, `${name} does not join again`);
    }
    admin.close();
    admin = new AdminClient(adminDir, identityOf(readFileSync(join(adminDir, 'admin.crt'), 'utf8')).clusterId);
    const again = admin;
    await eventually('the same three voters', 60_000, async () => {
      const s = await again.status(published[2]!);
      return JSON.stringify([...s.voters].sort()) === JSON.stringify(voters) && s.learners.length === 0
        ? true
        : undefined;
    });
    const got = await eventually('the value written before the restart', 30_000, async () =>
      (
        await again.call<{ value: Buffer }>(published[2]!, 'Secrets', 'get', { name: 'app/db/password' })
      ).value.toString(),
    );
    assert.equal(got, 'compose-value-1');
    await check(again, published, 2, caPem);
    process.stderr.write(
      `# compose${overrides.length === 0 ? '' : ' (with an override)'}: cluster up and healthy in ${upMs} ms\n`,
    );
  } catch (error) {
    // The services' logs say why; the temporary directory goes with them.
    const logs =
      run === null
        ? ''
        : [...run.model.services.keys()].map((name) => `--- ${name}\n${run!.log(name).slice(-2500)}`).join('\n');
    throw new Error(`${(error as Error).message}\n${logs}`, { cause: error });
  } finally {
    admin?.close();
    await run?.down();
    rmSync(root, { recursive: true, force: true });
  }
}

test('docker compose up, run as local processes in the order of depends_on: three voters, a write through one manager read on the others, every healthcheck passes; then the same commands again (a restart) change nothing', {
  timeout: 360_000,
}, async () => {
  await upTwice([], async (client, published, _round, caPem) => {
    for (const address of published) {
      assert.equal((await client.call<{ protection: string }>(address, 'Keys', 'status', {})).protection, 'key-file');
      // A client that checks host names (any gRPC library but Coffer's own) dials the published
      // port as localhost or 127.0.0.1: both names are in the certificate; another name is not.
      assert.equal(await standardHandshake(address, caPem, 'localhost'), 'ok', `${address} as localhost`);
      assert.equal(await standardHandshake(address, caPem, '127.0.0.1'), 'ok', `${address} as 127.0.0.1`);
      assert.equal(await standardHandshake(address, caPem, 'm9.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');
    }
  });
});

test('docker-compose.autolock.yml over docker-compose.yml: every manager autolocked with the unlock key from a secret, and a restart unlocks them from it', {
  timeout: 360_000,
}, async () => {
  await upTwice([AUTOLOCK], async (client, published, round) => {
    await eventually(`every manager autolocked (round ${round})`, 30_000, async () => {
      const all = await Promise.all(
        published.map((address) => client.call<{ protection: string }>(address, 'Keys', 'status', {})),
      );
      return all.every((k) => k.protection === 'unlock-key') ? true : undefined;
    });
  });
});

test('a broken compose file fails the run: a wrong flag, a manager that does not wait for init, a dependency cycle', {
  timeout: 240_000,
}, async () => {
  const cases: Array<{ what: string; edit: (text: string) => string; error: RegExp }> = [
    {
      what: 'a misspelt flag in m2',
      edit: (t) =>
        t.replace(
          '"--join", "m1:7400", "--token-file", "/shared/join-token", "--listen", "0.0.0.0:7400", "--advertise", "m2:7400"',
          '"--join", "m1:7400", "--token-fil", "/shared/join-token", "--listen", "0.0.0.0:7400", "--advertise", "m2:7400"',
        ),
      error: /service m2 exited/,
    },
    {
      what: 'm1 not waiting for init',
      edit: (t) =>
        t.replace(/( {2}m1:[\s\S]*?) {4}depends_on:\n {6}init:\n {8}condition: service_completed_successfully\n/, '$1'),
      error: /service m1 exited|never became healthy/,
    },
    {
      what: 'a dependency cycle',
      edit: (t) => t.replace(/( {2}m1:[\s\S]*?depends_on:\n)/, '$1      m3:\n        condition: service_healthy\n'),
      error: /cycle/,
    },
  ];
  for (const { what, edit, error } of cases) {
    const text = edit(COMPOSE.text);
    assert.notEqual(text, COMPOSE.text, `the edit for "${what}" applies`);
    const root = mkdtempSync(join(tmpdir(), 'coffer-compose-broken-'));
    let run: ComposeRun | null = null;
    try {
      makeSecrets(root);
      await assert.rejects(
        (async () => {
          run = new ComposeRun(loadCompose({ text, dir: REPO }, root), join(root, 'logs'));
          await run.up(60_000, { wait: true });
        })(),
        error,
        what,
      );
    } finally {
      await (run as ComposeRun | null)?.down();
      rmSync(root, { recursive: true, force: true });
    }
  }
});
